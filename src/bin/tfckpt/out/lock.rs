//! The lock that writers into one folder take turns on: `flock` on the folder itself, or on a
//! lock file in it (`.tfckpt-lock`) on network and cluster file systems and on Windows.

use std::path::Path;

/// The file whose lock stands in for DIR's where DIR itself cannot be locked across machines.
const LOCK_FILE: &str = ".tfckpt-lock";

/// An exclusive lock for the writers merging into the directory `dir` (or replacing a file in
/// it), held until the returned file is dropped. On a local file system, `flock` on `dir` itself.
/// On a network or cluster file system (NFS, SMB, Ceph, Lustre, GPFS, FUSE, ... by
/// [`on_network_fs`]), where Linux takes a directory's `flock` on this machine only (only a
/// file's goes to the server), and on Windows, where a directory does not open as a file, and
/// wherever the directory's lock fails: a lock on the file [`LOCK_FILE`] in `dir`, opened for
/// writing (an exclusive lock on NFS needs it; see [`open_lock_file`]), made for it and left there
/// (removing it would let a writer that opened it before lock a file no longer there while the
/// next one locks a new one). `None` where neither can be had (Lustre without `-o flock`, on NFS
/// a lock file this user may not write): writers then do not take turns (see the README). In a
/// debug build, `TFCKPT_TEST_LOCK_FILE` (any value) takes the lock file on any file system, for
/// its tests.
pub(super) fn lock(dir: &Path) -> Option<std::fs::File> {
    #[cfg(unix)]
    let file_only = on_network_fs(dir)
        || (cfg!(debug_assertions) && std::env::var_os("TFCKPT_TEST_LOCK_FILE").is_some());
    #[cfg(unix)]
    if !file_only {
        use std::os::unix::io::AsRawFd;
        if let Ok(f) = std::fs::File::open(dir) {
            loop {
                // SAFETY: flock on a descriptor this function owns; it blocks until no other
                // writer holds the lock, and the lock goes with the descriptor.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    return Some(f);
                }
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    break;
                }
            }
        }
    }
    let f = open_lock_file(&dir.join(LOCK_FILE), dir)?;
    loop {
        match f.lock() {
            Ok(()) => return Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Opens (or makes) the lock file `path` in `dir`. A new one takes `dir`'s read and write
/// permissions (a folder `rwxrwxr-x` gives `rw-rw-r--`), whatever the umask: every user who may
/// merge into `dir` (write into it) may then open it for writing, which an exclusive lock on NFS
/// needs. One this user may not write (its permissions narrowed since) is opened for reading,
/// which a local lock and Windows' take (NFS's then fails: writers do not take turns).
fn open_lock_file(path: &Path, dir: &Path) -> Option<std::fs::File> {
    let mut rw = std::fs::OpenOptions::new();
    rw.read(true).write(true);
    match rw.clone().create_new(true).open(path) {
        Ok(f) => {
            #[cfg(unix)]
            if let Ok(d) = std::fs::metadata(dir) {
                use std::os::unix::fs::PermissionsExt;
                let mode = d.permissions().mode() & 0o666;
                let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
            }
            #[cfg(not(unix))]
            let _ = dir;
            Some(f)
        }
        Err(_) => rw.open(path).or_else(|_| std::fs::File::open(path)).ok(),
    }
}

/// Whether `dir` is on a file system that other machines share (Linux: `statfs`'s type), where
/// a directory's `flock` locks only this machine's writers out.
#[cfg(unix)]
fn on_network_fs(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `struct statfs` is plain integers, for which all zeros is a value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `statfs` writes one `struct statfs` into `st`, for the NUL-terminated `c`.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return false;
        }
        is_network_fs_type(st.f_type as u64 & 0xffff_ffff)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// The `statfs` types (Linux's `f_type`, `linux/magic.h` and the file systems' own sources) of
/// file systems that several machines mount at once.
#[cfg(any(target_os = "linux", test))]
fn is_network_fs_type(t: u64) -> bool {
    const NETWORK: [u64; 14] = [
        0x6969,     // NFS
        0x517b,     // SMB
        0xfe534d42, // SMB2
        0xff534d42, // CIFS
        0x00c36400, // Ceph
        0x0bd00bd0, // Lustre
        0x47504653, // GPFS (IBM Storage Scale)
        0x19830326, // BeeGFS
        0x65735546, // FUSE (sshfs, gcsfuse, s3fs, JuiceFS, ...)
        0x01021997, // 9P
        0x5346414f, // AFS
        0x6b414653, // kAFS
        0x01161970, // GFS2
        0x7461636f, // OCFS2
    ];
    NETWORK.contains(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_told_from_local_ones() {
        for nfs_smb_fuse in [0x6969, 0xfe534d42, 0x65735546] {
            assert!(is_network_fs_type(nfs_smb_fuse), "{nfs_smb_fuse:#x}");
        }
        // ext4, XFS, btrfs, tmpfs, overlayfs
        for local in [0xef53, 0x58465342, 0x9123683e, 0x01021994, 0x794c7630] {
            assert!(!is_network_fs_type(local), "{local:#x}");
        }
    }
}
