//! Changing an image's refcount width (`img amend -o refcount_bits=N`).
//!
//! The stored refcounts are copied into a table of the new width, as
//! QEMU's qcow2_change_refcount_order copies them (an image whose counts are
//! off stays off in the same way, and `check -r` repairs it after, as
//! qemu-iotests 112 does). The check computes every cluster's references
//! first, only to refuse what copying could make worse: a referenced
//! cluster whose stored count is 0 would look free to the new structure's
//! allocation. Then a new refcount
//! structure of that width is written into clusters nothing uses (the old
//! structure stays intact until then). One write of the header's first
//! sector then switches table offset, table size and refcount order
//! together, so a crash leaves either the old image or the new one. The
//! old structure's clusters are free afterwards.

use byteorder::{BigEndian, ByteOrder};

use super::imrt::Imrt;
use super::{Ctx, Repair, Stop};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Rewrites the refcount structure of the quiescent image in `storage`
/// with `1 << new_order`-bit entries, copying the stored counts (leaks and
/// wrong counts included). Refused when the metadata cannot be walked or a
/// referenced cluster has a stored count of 0.
pub fn change_refcount_order(storage: &dyn Storage, new_order: u32) -> Result<()> {
    change_refcount_order_with_progress(storage, new_order, &mut |_, _| {})
}

/// [`change_refcount_order`], calling `status(done, total)` as QEMU's
/// qcow2_change_refcount_order calls its status callback (its walks over
/// the old refcount table, replayed by `reorder_walks`).
pub fn change_refcount_order_with_progress(
    storage: &dyn Storage,
    new_order: u32,
    status: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    if new_order > 6 {
        return Err(Error::InvalidField {
            field: "refcount_order",
            value: new_order.into(),
            reason: "refcount width may not exceed 64 bits",
        });
    }
    let mut ctx = Ctx::open(storage, Repair::None)?;
    if ctx.header.refcount_order == new_order {
        return Ok(());
    }
    let outcome = ctx
        .read_snapshot_table()
        .and_then(|()| ctx.check_refcounts());
    let broken = |ctx: &Ctx| {
        Error::Corrupt(format!(
            "cannot change the refcount width of an inconsistent image ({} corruptions, {} \
             check errors; first: {}); run 'img check -r all' first",
            ctx.res.corruptions,
            ctx.res.check_errors,
            ctx.messages.first().map_or("-", String::as_str)
        ))
    };
    match outcome {
        Ok(()) => {}
        Err(Stop::Fail(e)) => return Err(e),
        Err(Stop::Abort(_)) => return Err(broken(&ctx)),
    }
    if ctx.res.check_errors > 0 {
        return Err(broken(&ctx));
    }

    // Copy the stored counts into a table of the new width.
    let computed = ctx
        .imrt
        .take()
        .expect("check_refcounts computed the counts");
    for cluster in 0..computed.entries() {
        let stored = match ctx.stored.get(storage, cluster)? {
            Ok(count) => count,
            Err(_) => return Err(broken(&ctx)),
        };
        if stored == 0 && computed.get(cluster) > 0 {
            return Err(Error::Corrupt(format!(
                "cannot change the refcount width: cluster {cluster} is in use but its \
                 refcount is 0; run 'img check -r all' first"
            )));
        }
    }
    let cs = ctx.cluster_size;
    let mut counts = Imrt::new(new_order, cs, computed.entries()).map_err(|bytes| {
        Error::Unsupported(format!(
            "refcounts of {} clusters at the new width need {bytes} bytes of memory, more than \
             the limit of {}",
            computed.entries(),
            super::imrt::MAX_IMRT_BYTES
        ))
    })?;
    let mut used = Vec::with_capacity(computed.entries() as usize);
    for cluster in 0..computed.entries() {
        let count = match ctx.stored.get(storage, cluster)? {
            Ok(count) => count,
            Err(_) => return Err(broken(&ctx)),
        };
        if count > counts.max() {
            return Err(Error::AmendRefused(format!(
                "Cannot decrease refcount entry width to {} bits: Cluster at offset {:#x} has a \
                 refcount of {count}",
                1u32 << new_order,
                cluster * cs
            )));
        }
        counts.set(cluster, count);
        used.push(count != 0);
    }
    drop(computed);
    ctx.imrt = Some(counts);

    // The old structure's clusters stay counted (so nothing new lands on
    // them) until the new structure's layout is final.
    let mut old_clusters: Vec<u64> = Vec::new();
    let table_clusters = (ctx.stored.table.len() as u64 * 8).div_ceil(cs);
    let table_first = ctx.stored.table_offset / cs;
    old_clusters.extend(table_first..table_first + table_clusters);
    old_clusters.extend(
        ctx.stored
            .table
            .iter()
            .filter(|&&e| e != 0)
            .map(|&e| (e & super::stored::REFT_OFFSET_MASK) / cs),
    );

    let old_table_entries = ctx.stored.table.len() as u64;
    let layout = super::reorder_walks::Layout {
        old_table_entries,
        old_blocks: ctx.stored.table.iter().map(|&e| e != 0).collect(),
        old_block_entries: (cs * 8) >> ctx.header.refcount_order,
        new_block_entries: (cs * 8) >> new_order,
        cluster_size: cs,
    };
    let walks = super::reorder_walks::allocation_walks(used, &layout);

    ctx.fix = Repair::All;
    let (table_offset, table_clusters, reftable) = match ctx.write_new_structure() {
        Ok(layout) => layout,
        Err(Stop::Fail(e)) => return Err(e),
        Err(Stop::Abort(reason)) => {
            return Err(Error::Corrupt(format!(
                "writing the new refcount structure failed: {reason}"
            )))
        }
    };
    // Now free the old structure in the new counts and rewrite the blocks
    // that hold those counts.
    let block_bits = ctx.cluster_bits + 3 - new_order;
    let mut touched: Vec<u64> = Vec::new();
    for &cluster in &old_clusters {
        ctx.imrt().set(cluster, 0);
        touched.push(cluster >> block_bits);
    }
    touched.sort_unstable();
    touched.dedup();
    for block_index in touched {
        let block_offset = reftable[block_index as usize];
        let block = ctx.imrt().block(block_index).to_vec();
        storage.write_at(&block, block_offset)?;
    }
    storage.flush()?;
    super::reorder_walks::report(walks, old_table_entries, status);

    // Switch in one write of the header's first sector.
    let mut head = [0u8; 104];
    storage.read_at(&mut head, 0)?;
    BigEndian::write_u64(&mut head[48..56], table_offset);
    BigEndian::write_u32(&mut head[56..60], table_clusters as u32);
    BigEndian::write_u32(&mut head[96..100], new_order);
    storage.write_at(&head, 0)?;
    storage.flush()?;
    for cluster in old_clusters {
        storage.discard(cluster * cs, cs)?;
    }
    Ok(())
}
