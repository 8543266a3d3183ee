//! The `encrypt` part of `img info`: a LUKS header as QEMU's
//! `QCryptoBlockInfoLUKS` reports it (qcow2's `encrypt` member and the
//! luks format's whole section), and legacy AES's one-line form.

use qcow::crypto::{IvGenAlg, LuksHeader};

use super::qobject::{QDict, QObject};

/// QEMU's LUKS info; `format` adds `"format": "luks"` (qcow2's member).
pub fn luks_info(h: &LuksHeader, format: bool) -> QDict {
    let mut d = QDict::new();
    if format {
        d.put("format", "luks");
    }
    d.put("cipher-alg", h.spec.alg.name());
    d.put("cipher-mode", h.spec.mode.name());
    d.put("ivgen-alg", h.spec.ivgen.name());
    if h.spec.ivgen == IvGenAlg::Essiv {
        if let Some(hash) = h.spec.ivgen_hash {
            d.put("ivgen-hash-alg", hash.name());
        }
    }
    d.put("hash-alg", h.hash.name());
    d.put("detached-header", h.payload_offset_sector == 0);
    d.put("payload-offset", u64::from(h.payload_offset_sector) * 512);
    d.put("master-key-iters", h.mk_digest_iterations);
    d.put("uuid", h.uuid.as_str());
    let slots: Vec<QObject> = h
        .slots
        .iter()
        .map(|s| {
            let mut e = QDict::new();
            e.put("active", s.active);
            if s.active {
                e.put("iters", s.iterations);
                e.put("stripes", s.stripes);
            }
            e.put("key-offset", u64::from(s.key_offset_sector) * 512);
            QObject::Dict(e)
        })
        .collect();
    d.put("slots", slots);
    d
}

/// qcow2's `encrypt` member of a legacy AES image.
pub fn aes_info() -> QDict {
    let mut d = QDict::new();
    d.put("format", "aes");
    d
}
