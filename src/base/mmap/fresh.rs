//! Fresh memory: zeroed buffers for values, advised onto transparent huge pages or away from them
//! by this machine's rule, and page-locked staging for the GPU path (anonymous mappings, placed on
//! a GPU's NUMA node).

#[cfg(any(target_os = "linux", test, feature = "cuda"))]
use std::path::Path;

#[cfg(target_os = "linux")]
use super::max_map_count;
#[cfg(any(target_os = "linux", test, feature = "cuda"))]
use super::page_size;
use crate::base::error::Result;

/// Transparent huge page size on x86-64 and aarch64 Linux.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// The advice large fresh buffers get, decided once per process: `Some(true)` onto transparent
/// huge pages (`MADV_HUGEPAGE`), `Some(false)` away from them (`MADV_NOHUGEPAGE`), `None` none.
/// The choice is the `TFCKPT_HUGE_PAGES` environment variable (`always` or `never`), else this
/// machine's answer ([`huge_pages_pay`]); it is not given where it would change nothing
/// ([`useful_advice`]), since each advice may split a mapping in two or three.
#[cfg(target_os = "linux")]
fn huge_page_advice() -> Option<bool> {
    static ADVICE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ADVICE.get_or_init(|| {
        let sys = Path::new("/sys");
        let choice = huge_pages_choice(std::env::var_os("TFCKPT_HUGE_PAGES").as_deref(), sys);
        useful_advice(choice, thp_mode(sys).as_deref())
    })
}

/// The system's transparent huge page mode under the sysfs root `sys` (the bracketed word of
/// `kernel/mm/transparent_hugepage/enabled`: `always`, `madvise` or `never`), or `None` where
/// the kernel has no such file (no transparent huge pages). A file in another form gives its text.
#[cfg(target_os = "linux")]
fn thp_mode(sys: &Path) -> Option<String> {
    let text = std::fs::read_to_string(sys.join("kernel/mm/transparent_hugepage/enabled")).ok()?;
    let chosen = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'));
    Some(chosen.unwrap_or(text.trim()).to_string())
}

/// The advice for `choice` (true: onto huge pages) under the system's mode `mode`, or `None`
/// where it would change nothing: without transparent huge pages or in `never` mode no advice
/// gives a huge page, and away from them changes something only in `always` mode (in `madvise`
/// mode only advised ranges get huge pages). An unknown mode keeps the advice.
#[cfg(target_os = "linux")]
fn useful_advice(choice: bool, mode: Option<&str>) -> Option<bool> {
    match mode {
        None | Some("never") => None,
        Some("madvise") if !choice => None,
        _ => Some(choice),
    }
}

/// How many buffers are advised between two counts of the process's mappings
/// ([`advice_has_room`]).
#[cfg(target_os = "linux")]
const ADVICE_COUNT_EVERY: usize = 256;

/// Whether one more large buffer may be advised. An advice sets flags on part of a mapping, so the
/// kernel keeps that part apart: a buffer the allocator mapped becomes its own mapping (fresh
/// buffers left alone merge into one), and one inside the allocator's heap splits it in up to
/// three. A process may hold `vm.max_map_count` mappings; past that the allocator falls back on
/// its heap and no thread can start (its stack is a mapping), which 40,000 values of 4 MiB
/// advised one by one did (2026-12-07). So advice stops while the process holds more than a
/// quarter of the limit (less a margin for the buffers advised between two counts), as
/// [`max_private_maps`](super::max_private_maps) keeps another quarter for value mappings. The mappings are counted from
/// `/proc/self/maps` before the first advice and then every [`ADVICE_COUNT_EVERY`] buffers, each
/// 4 MiB or more (a count costs about 0.8 µs a mapping on this project's VM: 9 ms at 16,000, for
/// 1 GiB of buffers or more).
#[cfg(target_os = "linux")]
fn advice_has_room() -> bool {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    static ASKED: AtomicUsize = AtomicUsize::new(0);
    // True until the first count is in: threads that ask while it is being made give advice.
    static ROOM: AtomicBool = AtomicBool::new(true);
    if ASKED
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(ADVICE_COUNT_EVERY)
    {
        let room = mappings_held().is_some_and(|held| room_for_advice(held, max_map_count()));
        ROOM.store(room, Ordering::Relaxed);
    }
    ROOM.load(Ordering::Relaxed)
}

/// How many mappings the process holds: the lines of `/proc/self/maps`.
#[cfg(target_os = "linux")]
fn mappings_held() -> Option<usize> {
    let maps = std::fs::read("/proc/self/maps").ok()?;
    Some(maps.iter().filter(|&&b| b == b'\n').count())
}

/// [`advice_has_room`]'s rule: `held` mappings leave room for [`ADVICE_COUNT_EVERY`] more
/// advised buffers (up to two mappings each) within a quarter of the kernel's limit `max`.
#[cfg(target_os = "linux")]
fn room_for_advice(held: usize, max: usize) -> bool {
    held + 2 * ADVICE_COUNT_EVERY <= max / 4
}

/// [`huge_page_advice`]'s choice, given the variable's value and the sysfs root: `always` and
/// `never` (in any case, spaces around ignored) decide; any other value, or none, leaves it to
/// [`huge_pages_pay`].
#[cfg(target_os = "linux")]
fn huge_pages_choice(setting: Option<&std::ffi::OsStr>, sys: &Path) -> bool {
    let setting = setting.and_then(|s| s.to_str()).map(str::trim);
    match setting {
        Some(s) if s.eq_ignore_ascii_case("always") => true,
        Some(s) if s.eq_ignore_ascii_case("never") => false,
        _ => huge_pages_pay(sys),
    }
}

/// A heuristic, tuned on one kind of VM: huge pages are advised unless the kernel hands free
/// memory back to a hypervisor (a virtio balloon device, id 5, that negotiated free page
/// reporting, feature bit 5, as Firecracker, QEMU and Cloud Hypervisor guests may). There, freed
/// 2 MiB blocks are reported and unbacked within seconds, and a fresh huge page, taken from such a
/// block, is backed again by the host as the kernel zeroes it. Measured on such a VM (README:
/// Fresh memory): a fresh 2 GiB load in a new process after 5 s idle took a median 2.79 s on huge
/// pages and 0.55 s on 4 KiB pages; back to back, on blocks freed a moment before, huge pages won
/// (448 MiB: 0.105 s against 0.145 s). `sys` is the sysfs root (`/sys`).
#[cfg(target_os = "linux")]
fn huge_pages_pay(sys: &Path) -> bool {
    /// virtio device id of a memory balloon, and the feature bit of free page reporting (sysfs
    /// `features` is one character per bit, bit 0 first).
    const BALLOON: &str = "0x0005";
    const F_REPORTING: usize = 5;
    let Ok(devices) = std::fs::read_dir(sys.join("bus/virtio/devices")) else {
        return true;
    };
    let reports = devices.flatten().any(|d| {
        let read = |name: &str| std::fs::read_to_string(d.path().join(name)).unwrap_or_default();
        read("device").trim() == BALLOON
            && read("features").trim().as_bytes().get(F_REPORTING) == Some(&b'1')
    });
    !reports
}

/// A zeroed buffer for a destination tensor, or an error if the memory cannot be had (never an
/// abort). The memory comes from the allocator's zeroed path, which maps fresh pages instead of
/// writing zeros; each fresh page costs the kernel a fault and a zeroing pass when first touched.
/// Large buffers are advised onto transparent huge pages before that, or away from them where
/// huge pages cost more ([`huge_page_advice`], Linux): with 2 MiB pages the faults are 512 times
/// fewer (4 KiB first-touch faults cap a load near 2 GB/s per core).
pub(crate) fn alloc_zeroed(len: usize, tensor: &str) -> Result<Vec<u8>> {
    // SAFETY: all-zero bytes are valid `u8`s.
    unsafe { alloc_zeroed_as::<u8>(len, tensor) }
}

/// [`alloc_zeroed`] for `n` elements of `T`.
///
/// # Safety
/// All-zero bytes must be a valid `T` (true of the integers and floats).
pub(crate) unsafe fn alloc_zeroed_as<T>(n: usize, tensor: &str) -> Result<Vec<T>> {
    let len = n.saturating_mul(std::mem::size_of::<T>());
    if len == 0 {
        return Ok(Vec::new());
    }
    let fail = || -> crate::Error {
        crate::base::error::ErrorKind::Allocation {
            bytes: len as u64,
            tensor: tensor.to_string(),
        }
        .into()
    };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| fail())?;
    // SAFETY: `layout` has a non-zero size (len > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(fail());
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[T; n]`, every
    // element is initialized (zeroed, valid by the caller's promise), and length == capacity == n.
    let v = unsafe { Vec::from_raw_parts(ptr, n, n) };
    #[cfg(target_os = "linux")]
    if len >= 2 * HUGE_PAGE {
        if let Some(huge) = huge_page_advice().filter(|_| advice_has_room()) {
            // The pages the buffer touches, not only its aligned 2 MiB blocks: a buffer the
            // allocator mapped alone is then one mapping, not two or three (the huge pages are
            // the same).
            let page = page_size();
            let start = v.as_ptr() as usize & !(page - 1);
            let end = (v.as_ptr() as usize + len).next_multiple_of(page);
            let advice = if huge {
                libc::MADV_HUGEPAGE
            } else {
                libc::MADV_NOHUGEPAGE
            };
            // SAFETY: [start, end) is page aligned and every page of it holds bytes of `v`, so it
            // is mapped; either advice only changes how the kernel backs the range (here and in
            // the allocation sharing its first or last page), never its contents. Failure is
            // harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, advice);
            }
        }
    }
    Ok(v)
}

/// The NUMA node of the PCI device `domain:bus:device.0` (a GPU), from sysfs under `sys` (`/sys`),
/// where the machine has more than one node; `None` on a machine of one node, where the kernel
/// does not say (`-1`), or off Linux.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn pci_numa_node(sys: &Path, domain: u32, bus: u32, device: u32) -> Option<u32> {
    let online = std::fs::read_to_string(sys.join("devices/system/node/online")).ok()?;
    if !cfg!(target_os = "linux") || online.trim().parse::<u32>().is_ok() {
        return None; // one node ("0"), or not Linux: nothing to choose
    }
    let dev = format!("{domain:04x}:{bus:02x}:{device:02x}.0");
    let node =
        std::fs::read_to_string(sys.join("bus/pci/devices").join(dev).join("numa_node")).ok()?;
    node.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// Fresh anonymous memory (memmap2's anonymous map), page aligned and zero, backed page by page on
/// first touch, unmapped when dropped. The staging ring's buffers on a GPU are made of it:
/// faulted in on every core ([`FreshMemory::fault_in`]), then page-locked in place by the
/// driver, which on the H200 took 12–19 ms for 256 MiB against 78–111 ms for the driver's own
/// pinned allocation (`cuMemHostAlloc`, which backs and zeroes every page on one thread;
/// `examples/gpu_probe.rs`, 2026-12-04), a cost every fresh process paid before its first byte
/// moved.
#[cfg(any(test, feature = "cuda"))]
pub(crate) struct FreshMemory {
    map: memmap2::MmapMut,
}

/// Backs every page of `buf` (fresh memory, still zero) now, one write of a zero per page (the
/// bytes stay zero), the pages spread over a thread per core, of its own: no rayon pool, so that a
/// helper thread can fault buffers in while the caller's pool (which may have a single thread)
/// waits for it. Registering memory with a GPU driver backs what is not yet backed on the
/// calling thread alone.
#[cfg(any(test, feature = "cuda"))]
pub(crate) fn fault_in(buf: &mut [u8]) {
    let page = page_size();
    let touch = |chunk: &mut [u8]| {
        for i in (0..chunk.len()).step_by(page) {
            // SAFETY: `i` is inside `chunk`; a volatile write so that the touch is made even
            // though it writes the zero already there.
            unsafe { std::ptr::write_volatile(chunk.as_mut_ptr().add(i), 0) };
        }
    };
    // At least 1 MiB a thread: a thread costs about what faulting in 1 MiB does.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(buf.len() >> 20).max(1);
    if threads == 1 {
        return touch(buf);
    }
    let per = buf.len().div_ceil(threads).next_multiple_of(page);
    std::thread::scope(|s| {
        for chunk in buf.chunks_mut(per) {
            // A thread that cannot be started leaves its pages to whatever touches them first
            // (a driver's registration backs them itself): slower, the same memory.
            let _ = std::thread::Builder::new().spawn_scoped(s, move || touch(chunk));
        }
    });
}

#[cfg(any(test, feature = "cuda"))]
impl FreshMemory {
    /// `len` bytes (at least one page), not yet backed. Large ones are advised onto transparent
    /// huge pages or away from them by the same rule as the host's fresh buffers
    /// ([`huge_page_advice`]); on Linux the mapping is not inherited by a child the process forks
    /// (`MADV_DONTFORK`: a trainer's forked data workers would otherwise make its pages
    /// copy-on-write, and the parent's next write would move them away from what a GPU driver
    /// page-locked). Fails with the system's error where it has no room.
    pub(crate) fn new(len: usize) -> std::io::Result<FreshMemory> {
        let len = len.max(1).next_multiple_of(page_size());
        let map = memmap2::MmapMut::map_anon(len)?;
        // A failed advice leaves the mapping usable: huge pages are a preference, and without
        // DONTFORK only a fork while it is page-locked is at risk, as with any memory a trainer
        // registers itself.
        #[cfg(target_os = "linux")]
        {
            use memmap2::Advice;
            let _ = map.advise(Advice::DontFork);
            if let Some(huge) = huge_page_advice().filter(|_| len >= 2 * HUGE_PAGE) {
                let _ = map.advise(if huge {
                    Advice::HugePage
                } else {
                    Advice::NoHugePage
                });
            }
        }
        Ok(FreshMemory { map })
    }

    /// Asks that the pages be backed on NUMA node `node` where it has room (`MPOL_PREFERRED`),
    /// before they are faulted in: a GPU reads its staging fastest from the node its PCIe root is
    /// on, while the threads that fault the pages in run on every node. Linux only (elsewhere it
    /// does nothing); the system's error where the kernel refuses.
    pub(crate) fn prefer_node(&self, node: u32) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            const MPOL_PREFERRED: libc::c_long = 1;
            let bits = libc::c_ulong::BITS as usize;
            let mut mask = vec![0 as libc::c_ulong; node as usize / bits + 1];
            mask[node as usize / bits] |= 1 << (node as usize % bits);
            // SAFETY: the range is this mapping, page aligned; `mask` holds `mask.len() * bits`
            // bits, and the count given is one more, as the kernel wants (it reads one bit fewer
            // than `maxnode`, as libnuma knows: with the count alone the mask's last bit, node
            // 63 of a one-word mask, was dropped, and an empty mask silently became "local").
            // A policy changes where pages are placed, never their contents.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_mbind,
                    self.map.as_ptr() as *mut libc::c_void,
                    self.map.len() as libc::c_ulong,
                    MPOL_PREFERRED,
                    mask.as_ptr(),
                    (mask.len() * bits + 1) as libc::c_ulong,
                    0 as libc::c_uint,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = node;
        Ok(())
    }

    /// Backs every page now ([`fault_in`]).
    #[cfg(test)]
    pub(crate) fn fault_in(&mut self) {
        fault_in(self.as_mut_slice());
    }

    /// Memory for `count` buffers of `bytes` each, every buffer starting on a page of its own
    /// ([`FreshMemory::buffers`]).
    pub(crate) fn for_buffers(count: usize, bytes: usize) -> std::io::Result<FreshMemory> {
        let stride = bytes.max(1).next_multiple_of(page_size());
        let len = stride
            .checked_mul(count.max(1))
            .ok_or_else(|| std::io::Error::other(format!("{count} buffers of {bytes} bytes")))?;
        FreshMemory::new(len)
    }

    /// The `count` buffers of `bytes` laid out by [`FreshMemory::for_buffers`].
    pub(crate) fn buffers(&mut self, count: usize, bytes: usize) -> Vec<&mut [u8]> {
        let stride = bytes.max(1).next_multiple_of(page_size());
        assert!(
            stride * count <= self.len(),
            "{count} buffers of {bytes} bytes"
        );
        self.as_mut_slice()
            .chunks_mut(stride)
            .take(count)
            .map(|b| &mut b[..bytes])
            .collect()
    }

    /// The mapping's first byte.
    #[cfg(test)]
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Its length: what was asked for, rounded up to whole pages.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs root with the given virtio devices (id, features).
    #[cfg(target_os = "linux")]
    fn sysfs(devices: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (i, (id, features)) in devices.iter().enumerate() {
            let d = root.path().join(format!("bus/virtio/devices/virtio{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("device"), format!("{id}\n")).unwrap();
            std::fs::write(d.join("features"), format!("{features}\n")).unwrap();
        }
        root
    }

    #[test]
    fn a_gpu_s_numa_node_is_read_from_sysfs_only_where_there_are_several() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        let node_dir = sys.join("devices/system/node");
        std::fs::create_dir_all(&node_dir).unwrap();
        let dev = sys.join("bus/pci/devices/0000:c1:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        // One node: nothing to choose.
        std::fs::write(node_dir.join("online"), "0\n").unwrap();
        assert_eq!(pci_numa_node(sys, 0, 0xc1, 0), None);
        std::fs::write(node_dir.join("online"), "0-1\n").unwrap();
        let want = if cfg!(target_os = "linux") {
            Some(1)
        } else {
            None
        };
        assert_eq!(pci_numa_node(sys, 0, 0xc1, 0), want);
        // Another device, a device the kernel gives no node (-1), no sysfs at all.
        assert_eq!(pci_numa_node(sys, 0, 0xc2, 0), None);
        std::fs::write(dev.join("numa_node"), "-1\n").unwrap();
        assert_eq!(pci_numa_node(sys, 0, 0xc1, 0), None);
        assert_eq!(pci_numa_node(&sys.join("none"), 0, 0xc1, 0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_advised_unless_the_host_reclaims_free_memory() {
        use std::ffi::OsStr;
        // This VM's devices: a balloon that reports free pages, a net and a block device.
        let reporting = "0110010100000000000000000000000010000000";
        let vm = sysfs(&[
            ("0x0005", reporting),
            ("0x0001", "1100010110111011000000000000010010000000"),
            ("0x0002", "0010001001100100000000000000010010000000"),
        ]);
        assert!(!huge_pages_pay(vm.path()));
        // A balloon without reporting (bit 5 clear), reporting bits on other devices, no virtio,
        // no sysfs at all: huge pages pay.
        let cases = [
            sysfs(&[("0x0005", "0110000100000000")]),
            sysfs(&[("0x0001", reporting), ("0x0002", reporting)]),
            sysfs(&[("0x0005", "01100")]),
            sysfs(&[]),
        ];
        for root in &cases {
            assert!(huge_pages_pay(root.path()), "{:?}", root.path());
        }
        assert!(huge_pages_pay(&vm.path().join("missing")));
        // The variable decides when it says always or never; anything else asks the machine.
        let bare = &cases[0];
        for (setting, on_vm, on_bare) in [
            (None, false, true),
            (Some("always"), true, true),
            (Some("never"), false, false),
            (Some(" never\n"), false, false),
            (Some("ALWAYS"), true, true),
            (Some("Never"), false, false),
            (Some(""), false, true),
            (Some("auto"), false, true),
            (Some("1"), false, true),
        ] {
            let setting = setting.map(OsStr::new);
            assert_eq!(huge_pages_choice(setting, vm.path()), on_vm, "{setting:?}");
            assert_eq!(
                huge_pages_choice(setting, bare.path()),
                on_bare,
                "{setting:?}"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn advice_that_changes_nothing_is_not_given() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        assert_eq!(thp_mode(sys), None);
        let dir = sys.join("kernel/mm/transparent_hugepage");
        std::fs::create_dir_all(&dir).unwrap();
        for (text, mode) in [
            ("always [madvise] never\n", "madvise"),
            ("[always] madvise never\n", "always"),
            ("always madvise [never]\n", "never"),
            ("madvise\n", "madvise"),
        ] {
            std::fs::write(dir.join("enabled"), text).unwrap();
            assert_eq!(thp_mode(sys).as_deref(), Some(mode), "{text:?}");
        }
        // (choice, system mode) -> advice given: away from huge pages only where the system
        // would give them unasked; none without huge pages at all.
        for (choice, mode, advice) in [
            (true, Some("always"), Some(true)),
            (false, Some("always"), Some(false)),
            (true, Some("madvise"), Some(true)),
            (false, Some("madvise"), None),
            (true, Some("never"), None),
            (false, Some("never"), None),
            (true, None, None),
            (false, None, None),
            (true, Some("odd"), Some(true)),
            (false, Some("odd"), Some(false)),
        ] {
            assert_eq!(useful_advice(choice, mode), advice, "{choice} {mode:?}");
        }
        // Advice stops where 256 more buffers (two mappings each) would pass a quarter of the
        // kernel's limit.
        assert!(room_for_advice(100, 65530));
        assert!(room_for_advice(65530 / 4 - 512, 65530));
        assert!(!room_for_advice(65530 / 4 - 511, 65530));
        assert!(!room_for_advice(0, 1000));
    }

    /// Many large fresh buffers, each advised, leave the process room for more mappings: in a
    /// child process (the advice is chosen once per process) with `TFCKPT_HUGE_PAGES=always`,
    /// more 4 MiB buffers than the kernel allows mappings over two (advising each one's aligned
    /// 2 MiB blocks alone made 1.6 mappings a buffer, and past the limit no thread could start)
    /// end with the process under half its limit, and a thread starts; advice goes on until the
    /// process holds about a quarter of it.
    #[cfg(target_os = "linux")]
    #[test]
    fn many_advised_buffers_leave_room_for_mappings() {
        const CHILD: &str = "TFCKPT_TEST_MANY_BUFFERS";
        let held = || {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            assert_eq!(mappings_held(), Some(maps.lines().count()));
            maps.lines().count()
        };
        let max = max_map_count();
        let n = max / 2 + 1_000;
        if std::env::var_os(CHILD).is_some() {
            let mut keep = Vec::with_capacity(n);
            for i in 0..n {
                match alloc_zeroed(4 << 20, "test buffer") {
                    Ok(v) => keep.push(v),
                    // A host that commits memory strictly (vm.overcommit_memory = 2) runs out
                    // first: what was advised so far must still have left room.
                    Err(e) => {
                        eprintln!("stopped after {i} buffers: {e}");
                        break;
                    }
                }
            }
            let held = held();
            assert!(held <= max / 2, "{held} mappings of {max}");
            // Advice went on up to about a quarter of the limit (each advised buffer one mapping).
            if huge_page_advice() == Some(true) && keep.len() == n {
                assert!(
                    held >= max / 8,
                    "advice stopped at {held} mappings of {max}"
                );
            }
            std::thread::spawn(|| ()).join().unwrap();
            return;
        }
        if max > 300_000 {
            eprintln!(
                "skipped: vm.max_map_count is {max}: 4 MiB for half of it is too much to map"
            );
            return;
        }
        in_child(
            "many_advised_buffers_leave_room_for_mappings",
            &[("TFCKPT_HUGE_PAGES", "always"), (CHILD, "1")],
        );
    }

    /// Runs this module's test `name` alone in a child process with `env`.
    #[cfg(target_os = "linux")]
    fn in_child(name: &str, env: &[(&str, &str)]) {
        crate::base::test_in_child(&format!("base::mmap::fresh::tests::{name}"), env);
    }

    /// The choice reaches the buffers: in a child process per setting (the choice is made once
    /// per process), a fresh 8 MiB buffer's mapping carries `hg` (advised onto huge pages) or `nh`
    /// (advised away) in its `VmFlags`, or neither where the system's mode makes that advice
    /// change nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_choice_reaches_the_buffers_mapping() {
        const CHILD: &str = "TFCKPT_TEST_HUGE_PAGES_FLAG";
        if let Some(flag) = std::env::var_os(CHILD) {
            let v = alloc_zeroed(8 << 20, "test buffer").unwrap();
            let at = (v.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
            // A mapping's first line starts with its address range, `start-end`, in hex.
            let range = |line: &str| {
                let (a, b) = line.split(' ').next()?.split_once('-')?;
                let hex = |h| usize::from_str_radix(h, 16).ok();
                Some(hex(a)?..hex(b)?)
            };
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut inside = false;
            for line in smaps.lines() {
                if let Some(r) = range(line) {
                    inside = r.contains(&at);
                } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
                    let flags: Vec<&str> = flags.split_whitespace().collect();
                    match flag.to_str().unwrap() {
                        "-" => assert!(
                            !flags.contains(&"hg") && !flags.contains(&"nh"),
                            "advised: {flags:?}"
                        ),
                        flag => assert!(flags.contains(&flag), "{flag} not in {flags:?}"),
                    }
                    return;
                }
            }
            panic!("no mapping holds {at:#x}");
        }
        if !Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let mode = thp_mode(Path::new("/sys"));
        for (setting, choice) in [("always", true), ("never", false)] {
            let flag = match useful_advice(choice, mode.as_deref()) {
                Some(true) => "hg",
                Some(false) => "nh",
                None => "-",
            };
            in_child(
                "the_choice_reaches_the_buffers_mapping",
                &[("TFCKPT_HUGE_PAGES", setting), (CHILD, flag)],
            );
        }
    }

    /// Pages of `m` the system has backed (`mincore`).
    #[cfg(target_os = "linux")]
    fn resident_pages(m: &FreshMemory) -> usize {
        let pages = m.len() / page_size();
        let mut v = vec![0u8; pages];
        // SAFETY: the range is `m`'s mapping, page aligned; `v` has one byte per page.
        let r = unsafe { libc::mincore(m.as_ptr() as *mut libc::c_void, m.len(), v.as_mut_ptr()) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn fresh_memory_is_zero_page_aligned_and_faulted_in_on_request() {
        let page = page_size();
        let mut m = FreshMemory::new(3 * page + 1).unwrap();
        assert_eq!(m.len(), 4 * page);
        assert_eq!(m.as_ptr() as usize % page, 0);
        #[cfg(target_os = "linux")]
        assert_eq!(resident_pages(&m), 0, "backed before any touch");
        m.fault_in();
        #[cfg(target_os = "linux")]
        assert_eq!(resident_pages(&m), 4, "every page backed by fault_in");
        assert!(m.as_mut_slice().iter().all(|&b| b == 0));
        let s = m.as_mut_slice();
        s[page] = 7;
        s[4 * page - 1] = 9;
        assert_eq!((s[page], s[4 * page - 1]), (7, 9));
        // A large one, faulted in on several threads, and moved to another thread to drop.
        let mut big = FreshMemory::new(8 << 20).unwrap();
        big.fault_in();
        #[cfg(target_os = "linux")]
        assert_eq!(resident_pages(&big), (8 << 20) / page);
        std::thread::spawn(move || drop(big)).join().unwrap();
        assert_eq!(FreshMemory::new(0).unwrap().len(), page);
        // A NUMA node preferred: the policy is the mapping's (get_mempolicy at its address).
        // Where a sandbox forbids memory policies (Docker's default seccomp profile does without
        // CAP_SYS_NICE: EPERM), there is nothing to check.
        #[cfg(target_os = "linux")]
        let forbidden =
            |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS));
        let preferred = FreshMemory::new(4 * page).unwrap().prefer_node(0);
        #[cfg(not(target_os = "linux"))]
        assert!(preferred.is_ok(), "nothing to do off Linux: {preferred:?}");
        #[cfg(target_os = "linux")]
        match preferred {
            Err(e) if forbidden(&e) => eprintln!("memory policies are not allowed here: {e}"),
            r => {
                r.unwrap();
                let mut m = FreshMemory::new(4 * page).unwrap();
                m.prefer_node(0).unwrap();
                let (mut mode, mut mask) = (-1 as libc::c_int, [0 as libc::c_ulong; 16]);
                const MPOL_F_ADDR: libc::c_ulong = 2;
                // SAFETY: `mode` and `mask` are writable and hold what is asked for (1024 bits).
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_get_mempolicy,
                        &mut mode as *mut libc::c_int,
                        mask.as_mut_ptr(),
                        1024 as libc::c_ulong,
                        m.as_ptr() as *mut libc::c_void,
                        MPOL_F_ADDR,
                    )
                };
                assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
                assert_eq!((mode, mask[0] & 1), (1, 1), "MPOL_PREFERRED for node 0");
                m.fault_in();
                assert!(m.as_mut_slice().iter().all(|&b| b == 0));
                // A node the machine does not have is refused, not ignored, the last bit of a
                // mask word too (the kernel reads one bit fewer than the count it is given).
                assert!(m.prefer_node(1000).is_err());
                assert!(m.prefer_node(63).is_err(), "node 63 on this machine?");
            }
        }
        // Not inherited by a forked child (Linux: `dc` in the mapping's VmFlags).
        #[cfg(target_os = "linux")]
        {
            let m = FreshMemory::new(4 * page).unwrap();
            let start = format!("{:x}-", m.as_ptr() as usize);
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let flags = smaps
                .split_inclusive('\n')
                .skip_while(|l| !l.starts_with(&start))
                .find(|l| l.starts_with("VmFlags:"))
                .unwrap_or_else(|| panic!("no mapping at {start} in /proc/self/smaps"));
            assert!(flags.split_whitespace().any(|f| f == "dc"), "{flags}");
        }
        // Buffers, each on pages of its own.
        let mut m = FreshMemory::for_buffers(3, page + 5).unwrap();
        assert_eq!(m.len(), 6 * page);
        let base = m.as_ptr() as usize;
        let bufs = m.buffers(3, page + 5);
        let starts: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize - base).collect();
        assert_eq!(starts, [0, 2 * page, 4 * page]);
        assert!(bufs.iter().all(|b| b.len() == page + 5));
        assert!(FreshMemory::for_buffers(usize::MAX / 2, 1 << 20).is_err());
    }
}
