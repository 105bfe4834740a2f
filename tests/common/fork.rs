//! Runs a closure in a forked child of the test process, as a trainer's data-loader worker runs:
//! the child has only the forking thread, none of the pools its parent started.

/// Forks; the child runs `f` under a 60 s alarm and exits 0 if it returned `Ok`, 1 on `Err`
/// (printed), 2 on a panic, and dies of `SIGALRM` if it hangs. Returns what happened to the child.
/// The child must not take locks another thread of the test process may hold (the environment's:
/// no `set_var`; stdout's and stderr's: no `println!`).
#[cfg(unix)]
pub fn in_child(f: impl FnOnce() -> Result<(), String>) -> String {
    // SAFETY: fork, then in the child only this closure and _exit; the parent waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: alarm and _exit are async-signal-safe and take plain integers.
        unsafe { libc::alarm(60) };
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                // Straight to the file descriptor: stderr's lock may have been held by another
                // thread of the parent at the fork.
                let line = format!("child: {e}\n");
                // SAFETY: writes a buffer that lives across the call.
                unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
                1
            }
            Err(_) => 2,
        };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => "ok".into(),
            1 => "returned an error".into(),
            2 => "panicked".into(),
            c => format!("exited {c}"),
        }
    } else if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGALRM {
        "hung (killed by its 60 s alarm)".into()
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with status {status:#x}")
    }
}
