//! Standard output and standard error that never panic when the reader went away.
//!
//! `outln!` panics when standard output is a closed pipe (`kiln builds | head -1`),
//! because Rust ignores SIGPIPE. `outln!` instead ends a short command quietly with exit
//! code 141 — what a shell reports for `git log | head`, which SIGPIPE ends — while the
//! long-running commands (`serve`, `up`, `agent`, `run`, `emit`) carry on: losing their
//! standard output must not stop a server, an agent or a build. `errln!` ignores errors
//! (there is nowhere left to report them).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit code after standard output closed: 128 + SIGPIPE, as a shell reports it for a
/// command that SIGPIPE ended.
pub const CLOSED_PIPE_EXIT_CODE: i32 = 141;

static KEEP_RUNNING: AtomicBool = AtomicBool::new(false);

/// From now on a failed write to standard output is ignored instead of ending the process.
pub fn keep_running_when_stdout_closes() {
    KEEP_RUNNING.store(true, Ordering::SeqCst);
}

/// `outln!` without the panic; used through `outln!`.
pub fn write_stdout_line(arguments: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(arguments)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(error) = written {
        stdout_failed(&error);
    }
}

/// `errln!` without the panic; used through `errln!`.
pub fn write_stderr_line(arguments: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(arguments)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Standard output failed: a closed pipe ends a short command quietly, another error
/// (a full disk) ends it with the reason; long-running commands ignore both.
pub fn stdout_failed(error: &std::io::Error) {
    if KEEP_RUNNING.load(Ordering::SeqCst) {
        return;
    }
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(CLOSED_PIPE_EXIT_CODE);
    }
    write_stderr_line(format_args!(
        "kiln: cannot write to standard output: {error}"
    ));
    std::process::exit(74);
}

/// Whether an error that ended a command is standard output having closed (a write with
/// `?` in a command that streams, such as `kiln logs`).
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    !KEEP_RUNNING.load(Ordering::SeqCst)
        && error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        })
}

/// `outln!` that never panics (see the module doc).
macro_rules! outln {
    () => {
        $crate::output::write_stdout_line(format_args!(""))
    };
    ($($argument:tt)*) => {
        $crate::output::write_stdout_line(format_args!($($argument)*))
    };
}

/// `errln!` that never panics.
macro_rules! errln {
    ($($argument:tt)*) => {
        $crate::output::write_stderr_line(format_args!($($argument)*))
    };
}
