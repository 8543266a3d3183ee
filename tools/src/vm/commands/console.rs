//! `console DOMAIN`: the terminal attached to the guest's serial through
//! the console socket of the run folder; Ctrl-] detaches, as in virsh.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use super::{lookup, Ctx};
use crate::vm::cli::Invocation;
use crate::vm::error::VmError;
use crate::vm::runtime::{self, RunFolder, QUERY_TIMEOUT};
use crate::vm::terminal::{poll_readable, RawMode};
use crate::vm::xml::DomainDef;

/// The byte that detaches: Ctrl-] (GS).
const ESCAPE: u8 = 0x1d;

/// `console DOMAIN`.
pub fn console(ctx: &Ctx, inv: &Invocation, out: &mut String) -> Result<(), VmError> {
    let def = lookup(ctx, inv.required("domain"))?;
    if runtime::inspect(&ctx.store, &def.name, QUERY_TIMEOUT, None)
        .active()
        .is_none()
    {
        return Err(VmError::Refused("The domain is not running".to_string()));
    }
    attach(&def, ctx, out)
}

/// Relays the terminal and the guest's serial until Ctrl-] or the guest's
/// end.
pub fn attach(def: &DomainDef, ctx: &Ctx, out: &mut String) -> Result<(), VmError> {
    let run = RunFolder::new(ctx.store.run_dir(&def.name));
    let mut socket = UnixStream::connect(run.console_socket()).map_err(|e| {
        VmError::OperationFailed(format!(
            "cannot connect to the console of domain '{}': {}",
            def.name,
            super::define::os_reason(&e)
        ))
    })?;
    if !ctx.quiet {
        crate::vm::output::emit(&format!(
            "Connected to domain '{}'\nEscape character is ^] (Ctrl + ])\n",
            def.name
        ));
    }
    let stdin_fd = std::io::stdin().as_raw_fd();
    let raw = RawMode::enter(stdin_fd);
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    let mut buffer = [0u8; 4096];
    let result = loop {
        let fds: Vec<i32> = if stdin_open {
            vec![socket.as_raw_fd(), stdin_fd]
        } else {
            vec![socket.as_raw_fd()]
        };
        let ready = match poll_readable(&fds, 1000) {
            Ok(r) => r,
            Err(e) => break Err(VmError::Internal(format!("poll: {e}"))),
        };
        if ready[0] {
            match socket.read(&mut buffer) {
                Ok(0) | Err(_) => break Ok(()),
                Ok(n) => {
                    if stdout
                        .write_all(&buffer[..n])
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        break Ok(());
                    }
                }
            }
        }
        if stdin_open && ready.get(1).copied().unwrap_or(false) {
            let n = match crate::vm::terminal::read_fd(stdin_fd, &mut buffer) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    continue;
                }
                Ok(n) => n,
            };
            let input = &buffer[..n];
            let (send, detach) = match input.iter().position(|&b| b == ESCAPE) {
                Some(at) => (&input[..at], true),
                None => (input, false),
            };
            if socket.write_all(send).is_err() || detach {
                break Ok(());
            }
        }
    };
    drop(raw);
    let _ = out;
    result
}
