//! Runs a closure in a forked child of the test process, as a trainer's data-loader worker runs:
//! the child has only the forking thread, none of the pools its parent started; or a test in a
//! new process of its own, for what must not touch the other tests' process-wide state.

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

/// Runs the ignored test `name` of this binary in a new process with `key=value` in its
/// environment from the start (for what a test must not change in this shared process), and fails
/// unless it passes.
pub fn in_a_process_of_its_own(name: &str, key: &str, value: impl AsRef<std::ffi::OsStr>) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "--ignored", "--nocapture", name])
        .env(key, value)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name}: {text}"
    );
}

/// Waits (up to 20 s) until `child` has mapped `file` (`/proc/PID/maps`, which names it with its
/// symbolic links resolved), or has exited: a test that truncates a file under a running child
/// then lands during its reads, not before it opened the file.
#[cfg(target_os = "linux")]
pub fn wait_until_mapped(child: &mut std::process::Child, file: &std::path::Path) {
    let dir = std::fs::canonicalize(file.parent().unwrap()).unwrap();
    let mapped_as = dir.join(file.file_name().unwrap());
    let mapped_as = mapped_as.to_string_lossy();
    let maps = format!("/proc/{}/maps", child.id());
    let since = std::time::Instant::now();
    while child.try_wait().unwrap().is_none()
        && since.elapsed() < std::time::Duration::from_secs(20)
    {
        match std::fs::read_to_string(&maps) {
            Ok(m) if m.contains(&*mapped_as) => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
            Err(_) => return,
        }
    }
}
