//! Times the building blocks of the GPU load one by one on a real GPU, to find what bounds it:
//! pinned H2D by chunk size, the CPU side of the staging ring (copy, CRC, both), the ring with
//! device copies as the library runs it (with and without the checksum, from a fresh and a
//! pre-faulted mapping: what each costs the whole ring), host memory bandwidth beside the ring's
//! geometry (buffer count and size, streaming or ordinary stores: whether host memory bounds the
//! ring, and whether a ring that stays in cache escapes it), and read-only registration of a file
//! mapping (register, DMA, unregister) by chunk size, fresh and pre-faulted.
//!
//! First, what a fresh process pays for 256 MiB of staging: pinned by the driver, or ordinary
//! memory faulted in and page-locked in place.
//!
//! `gpu_probe [--gb 4] [--file /tmp/tfckpt-probe.bin]` (needs `--features cuda` and a GPU).

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{result, sys, CudaContext, CudaStream};
use rayon::prelude::*;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

const MIB: usize = 1 << 20;

fn gbps(bytes: usize, t: Instant) -> f64 {
    bytes as f64 / t.elapsed().as_secs_f64() / 1e9
}

struct Ev(sys::CUevent);

fn event(flags: u32) -> Ev {
    let mut ev = std::mem::MaybeUninit::uninit();
    unsafe { sys::cuEventCreate(ev.as_mut_ptr(), flags) }
        .result()
        .unwrap();
    Ev(unsafe { ev.assume_init() })
}

fn record(e: &Ev, s: &CudaStream) {
    unsafe { sys::cuEventRecord(e.0, s.cu_stream()) }
        .result()
        .unwrap();
}

fn sync(e: &Ev) {
    unsafe { sys::cuEventSynchronize(e.0) }.result().unwrap();
}

fn map(path: &str) -> memmap2::Mmap {
    let f = std::fs::File::open(path).unwrap();
    unsafe { memmap2::Mmap::map(&f) }.unwrap()
}

/// `dst = src` with non-temporal 32-byte stores where AVX is present (a plain copy up to `dst`'s
/// first 32-byte boundary, as the library's `stream_copy`).
fn nt_copy(dst: &mut [u8], src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let head = dst.as_ptr().align_offset(32).min(dst.len());
        if head > 0 {
            dst[..head].copy_from_slice(&src[..head]);
            return nt_copy(&mut dst[head..], &src[head..]);
        }
        if is_x86_feature_detected!("avx") {
            let n = dst.len() / 32 * 32;
            unsafe {
                #[target_feature(enable = "avx")]
                unsafe fn go(d: *mut u8, s: *const u8, n: usize) {
                    let mut i = 0;
                    while i < n {
                        let v = _mm256_loadu_si256(s.add(i) as *const __m256i);
                        _mm256_stream_si256(d.add(i) as *mut __m256i, v);
                        i += 32;
                    }
                    _mm_sfence();
                }
                go(dst.as_mut_ptr(), src.as_ptr(), n);
            }
            dst[n..].copy_from_slice(&src[n..]);
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// One pass of a staging ring over `m`: each unit of `unit` bytes is checksummed and copied
/// (streaming stores when `nt`) into the next buffer, in parallel pieces (16 KiB steps), then copied to the
/// device on alternating streams; a buffer is refilled only after its event.
fn ring_run(
    m: &[u8],
    bufs: &mut [&mut [u8]],
    unit: usize,
    do_crc: bool,
    nt: bool,
    dptr: u64,
    lanes: [&CudaStream; 2],
) -> RingRun {
    let flags = sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32
        | sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
    // Enough pieces for every core even in a small unit.
    let piece = (unit / 32).clamp(64 << 10, MIB);
    let t = Instant::now();
    let mut fences: Vec<Option<Ev>> = (0..bufs.len()).map(|_| None).collect();
    let (mut waited, mut filled) = (0f64, 0f64);
    for (i, u) in m.chunks(unit).enumerate() {
        let b = i % bufs.len();
        let lane = lanes[b % 2];
        if let Some(f) = fences[b].take() {
            let tw = Instant::now();
            sync(&f);
            waited += tw.elapsed().as_secs_f64();
            unsafe { sys::cuEventDestroy_v2(f.0) };
        }
        let tf = Instant::now();
        let buf = &mut bufs[b][..u.len()];
        buf.par_chunks_mut(piece)
            .zip(u.par_chunks(piece))
            .for_each(|(d, s)| {
                // As the library fills its ring: checksummed and copied 16 KiB at a time (the
                // library keeps a running checksum per piece instead of combining the steps').
                let mut crc = 0;
                for (d, s) in d.chunks_mut(16 << 10).zip(s.chunks(16 << 10)) {
                    if do_crc {
                        crc = tfckpt::crc::combine(crc, tfckpt::crc::crc32c(s), s.len() as u64);
                    }
                    if nt {
                        nt_copy(d, s);
                    } else {
                        d.copy_from_slice(s);
                    }
                }
                std::hint::black_box(crc);
            });
        filled += tf.elapsed().as_secs_f64();
        unsafe { result::memcpy_htod_async(dptr + (i * unit) as u64, buf, lane.cu_stream()) }
            .unwrap();
        let e = event(flags);
        record(&e, lane);
        fences[b] = Some(e);
    }
    for f in fences.into_iter().flatten() {
        sync(&f);
        unsafe { sys::cuEventDestroy_v2(f.0) };
    }
    RingRun {
        rate: gbps(m.len(), t),
        waited,
        filled,
    }
}

struct RingRun {
    rate: f64,
    waited: f64,
    filled: f64,
}

impl std::fmt::Display for RingRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} GB/s (waiting {:.3} s, filling {:.3} s)",
            self.rate, self.waited, self.filled
        )
    }
}

/// `bytes` of fresh anonymous memory (memmap2's, page aligned), advised onto huge pages where
/// Linux has them when `huge`, away from them otherwise, as the library's staging is.
fn fresh_memory(bytes: usize, huge: bool) -> memmap2::MmapMut {
    let m = memmap2::MmapMut::map_anon(bytes).unwrap();
    #[cfg(target_os = "linux")]
    let _ = m.advise(if huge {
        memmap2::Advice::HugePage
    } else {
        memmap2::Advice::NoHugePage
    });
    #[cfg(not(target_os = "linux"))]
    let _ = huge;
    m
}

fn main() {
    let gb: usize = arg("--gb", "4").parse().unwrap();
    let path = arg("--file", "/tmp/tfckpt-probe.bin");
    let n = gb << 30;
    if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(n) {
        let t = Instant::now();
        let chunk: Vec<u8> = (0..64 * MIB)
            .map(|i| ((i * 2_654_435_761) >> 13) as u8)
            .collect();
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..n / chunk.len() {
            std::io::Write::write_all(&mut f, &chunk).unwrap();
        }
        f.sync_all().ok();
        println!("wrote {} GiB in {:.1} s", gb, t.elapsed().as_secs_f64());
    }
    // Warm the page cache.
    {
        let m = map(&path);
        let t = Instant::now();
        let s: u64 = m.par_chunks(4 * MIB).map(|c| c[0] as u64).sum();
        println!(
            "touch mapping (fault-in, page cache warm): {:.1} GB/s ({s})",
            gbps(n, t)
        );
        let t = Instant::now();
        let c = tfckpt::crc::crc32c(&m);
        println!("crc32c all cores: {:.1} GB/s ({c:x})", gbps(n, t));
    }
    println!("rayon threads: {}", rayon::current_num_threads());
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let s2 = ctx.new_stream().unwrap();
    let dev = unsafe { stream.alloc::<u8>(n) }.unwrap();
    let dptr = {
        use cudarc::driver::DevicePtr;
        let (p, _g) = dev.device_ptr(&stream);
        p
    };
    // 0. What a fresh process pays for its staging ring (256 MiB): pinned allocation by the
    //    driver, against ordinary memory faulted in on every core and then page-locked in place.
    //    Twice, in turn, so that one-off costs of the context's first pinning show; then on 4 KiB
    //    pages, as the library's staging is where huge pages cost more (a VM that hands freed
    //    memory back to its host: README, Fresh memory). Faulted in as the library does it: one
    //    write per page, on every core.
    for round in 1..=3 {
        let huge = round < 3;
        let bytes = 256 * MIB;
        let t = Instant::now();
        let p = unsafe { ctx.alloc_pinned_with_flags::<u8>(bytes, 0) }.unwrap();
        let alloc = t.elapsed().as_secs_f64();
        drop(p);
        let t = Instant::now();
        let mut mem = fresh_memory(bytes, huge);
        let ptr = mem.as_mut_ptr() as *mut std::ffi::c_void;
        mem.par_chunks_mut(MIB).for_each(|c| {
            for i in (0..c.len()).step_by(4096) {
                c[i] = 1;
            }
        });
        let touch = t.elapsed().as_secs_f64();
        let t = Instant::now();
        unsafe { sys::cuMemHostRegister_v2(ptr, bytes, 0) }
            .result()
            .unwrap();
        let register = t.elapsed().as_secs_f64();
        let dev = unsafe { stream.alloc::<u8>(bytes) }.unwrap();
        let dptr = {
            use cudarc::driver::DevicePtr;
            let (p, _g) = dev.device_ptr(&stream);
            p
        };
        let t = Instant::now();
        for _ in 0..8 {
            unsafe { result::memcpy_htod_async(dptr, &mem[..], stream.cu_stream()) }.unwrap();
        }
        stream.synchronize().unwrap();
        let h2d = gbps(8 * bytes, t);
        unsafe { sys::cuMemHostUnregister(ptr) }.result().unwrap();
        drop(mem);
        println!(
            "staging 256 MiB, round {round}: pinned allocation {:.0} ms; anonymous memory ({}) faulted in on every core {:.0} ms + page-locked {:.0} ms; H2D from it {h2d:.1} GB/s",
            alloc * 1e3,
            if huge { "huge pages advised" } else { "4 KiB pages" },
            touch * 1e3,
            register * 1e3
        );
    }
    let ring_n = 4;
    let mut pinned: Vec<_> = (0..ring_n)
        .map(|_| unsafe { ctx.alloc_pinned_with_flags::<u8>(64 * MIB, 0) }.unwrap())
        .collect();
    let mut bufs: Vec<&mut [u8]> = pinned
        .iter_mut()
        .map(|p| p.as_mut_slice().unwrap())
        .collect();
    for b in bufs.iter_mut() {
        b.fill(1);
    }
    // 1. Pinned H2D by chunk size (one stream, then one sync).
    for chunk in [MIB, 8 * MIB, 64 * MIB] {
        let total = 4usize << 30;
        stream.synchronize().unwrap();
        let t = Instant::now();
        let mut off = 0;
        let mut k = 0;
        while off < total {
            let b = &bufs[k % ring_n][..chunk.min(64 * MIB)];
            unsafe { result::memcpy_htod_async(dptr + (off % n) as u64, b, stream.cu_stream()) }
                .unwrap();
            off += chunk;
            k += 1;
        }
        stream.synchronize().unwrap();
        println!(
            "pinned H2D, {} MiB copies: {:.1} GB/s",
            chunk / MIB,
            gbps(total, t)
        );
    }
    let m = map(&path);
    let src: &[u8] = &m;
    // 2. CPU side of the ring, no device.
    for (what, do_crc, do_copy) in [
        ("copy+crc", true, true),
        ("copy", false, true),
        ("crc", true, false),
    ] {
        let t = Instant::now();
        for (k, unit) in src.chunks(64 * MIB).enumerate() {
            let b = &mut bufs[k % ring_n][..unit.len()];
            b.par_chunks_mut(MIB)
                .zip(unit.par_chunks(MIB))
                .for_each(|(d, s)| {
                    if do_crc {
                        std::hint::black_box(tfckpt::crc::crc32c(s));
                    }
                    if do_copy {
                        d.copy_from_slice(s);
                    }
                });
        }
        println!(
            "ring CPU only, {what}, 64 MiB units: {:.1} GB/s",
            gbps(n, t)
        );
    }
    // 2b. Non-temporal copies (no read-for-ownership of the destination), with and without CRC;
    //     with it, each 1 MiB piece checksummed whole and then copied, or checksummed and copied
    //     16 KiB at a time (the library's steps since 2026-12-04: the copy reads what the
    //     checksum just brought into the first-level cache).
    for (what, crc_step) in [
        ("nt copy", 0),
        ("crc+nt copy", MIB),
        ("crc+nt copy in 16 KiB steps", 16 << 10),
    ] {
        let t = Instant::now();
        for (k, unit) in src.chunks(64 * MIB).enumerate() {
            let b = &mut bufs[k % ring_n][..unit.len()];
            b.par_chunks_mut(MIB)
                .zip(unit.par_chunks(MIB))
                .for_each(|(d, s)| {
                    if crc_step == 0 {
                        return nt_copy(d, s);
                    }
                    let mut crc = 0;
                    for (d, s) in d.chunks_mut(crc_step).zip(s.chunks(crc_step)) {
                        crc = tfckpt::crc::combine(crc, tfckpt::crc::crc32c(s), s.len() as u64);
                        nt_copy(d, s);
                    }
                    std::hint::black_box(crc);
                });
        }
        println!(
            "ring CPU only, {what}, 64 MiB units: {:.1} GB/s",
            gbps(n, t)
        );
    }
    // 3. The ring with device copies, as the library runs it (blocking-sync events, streaming
    //    copies into the pinned buffers, a fresh mapping as each load makes): with the checksum,
    //    without it (what the checksum costs the whole ring), and from a pre-faulted mapping (what
    //    faulting the mapping in costs).
    let lanes = [&*stream, &*s2];
    let mut rates = Vec::new();
    for (what, do_crc, prefault) in [
        ("checksum + streaming copy, fresh mapping", true, false),
        (
            "streaming copy only (no checksum), fresh mapping",
            false,
            false,
        ),
        ("checksum + streaming copy, pre-faulted mapping", true, true),
    ] {
        let m = map(&path);
        if prefault {
            let _: u64 = m.par_chunks(4096).map(|c| c[0] as u64).sum();
        }
        let r = ring_run(&m, &mut bufs, 64 * MIB, do_crc, true, dptr, lanes);
        rates.push(r.rate);
        println!("ring with device, {what}: {r}");
    }
    println!(
        "the checksum costs the ring {:.0}% of its time; faulting the mapping in, {:.0}%",
        100.0 * (1.0 - rates[0] / rates[1]),
        100.0 * (1.0 - rates[0] / rates[2])
    );
    drop(bufs);
    // 3b. Host memory bandwidth, and the ring's geometry. The ring moves each byte through host
    //     memory three times (read from the page cache, written to a pinned buffer, read by the
    //     DMA): if 3 x its rate is near the bandwidth, memory bounds it, not the cores or the link.
    //     A ring small enough to stay in the last-level cache, filled with ordinary stores, may let
    //     the DMA read the staged bytes from the cache instead of memory (two passes, not three).
    {
        let mut a = vec![0u8; 2 << 30];
        a.par_chunks_mut(MIB).for_each(|c| c.fill(1)); // resident
        let t = Instant::now();
        let sum: u64 = a
            .par_chunks(MIB)
            .map(|c| c.iter().step_by(64).map(|&x| x as u64).sum::<u64>())
            .sum();
        let read = gbps(a.len(), t);
        let z = vec![2u8; MIB]; // stays in cache: the stores are what is measured
        let t = Instant::now();
        a.par_chunks_mut(MIB)
            .for_each(|c| nt_copy(c, &z[..c.len()]));
        println!(
            "host memory, all cores: read {read:.1} GB/s, streaming write {:.1} GB/s ({sum})",
            gbps(a.len(), t)
        );
    }
    let mut pool = unsafe { ctx.alloc_pinned_with_flags::<u8>(256 * MIB, 0) }.unwrap();
    let pool = pool.as_mut_slice().unwrap();
    pool.fill(1);
    for (count, unit_mib, nt) in [
        (4, 64, true),
        (4, 64, false),
        (8, 8, true),
        (8, 8, false),
        (8, 4, false),
        (16, 2, false),
        (4, 16, false),
        (4, 16, true),
        (4, 8, true),
    ] {
        let unit = unit_mib * MIB;
        let mut bufs: Vec<&mut [u8]> = pool.chunks_mut(unit).take(count).collect();
        let m = map(&path);
        let r = ring_run(&m, &mut bufs, unit, true, nt, dptr, lanes);
        println!(
            "ring geometry {count} x {unit_mib} MiB, checksum + {} copy, fresh mapping: {r}",
            if nt { "streaming" } else { "ordinary" }
        );
    }
    // 4. Registration of a file mapping, by chunk size: fresh mapping, then pre-faulted.
    for prefault in [false, true] {
        for chunk in [64 * MIB, 256 * MIB, 1024 * MIB] {
            let m = map(&path);
            if prefault {
                let _: u64 = m.par_chunks(4096).map(|c| c[0] as u64).sum();
            }
            let (mut reg, mut dma, mut unreg) = (0f64, 0f64, 0f64);
            let t = Instant::now();
            for (i, c) in m.chunks(chunk).enumerate() {
                let t0 = Instant::now();
                unsafe {
                    sys::cuMemHostRegister_v2(
                        c.as_ptr() as *mut _,
                        c.len(),
                        sys::CU_MEMHOSTREGISTER_READ_ONLY,
                    )
                }
                .result()
                .unwrap();
                let t1 = Instant::now();
                unsafe {
                    result::memcpy_htod_async(dptr + (i * chunk) as u64, c, stream.cu_stream())
                }
                .unwrap();
                stream.synchronize().unwrap();
                let t2 = Instant::now();
                unsafe { sys::cuMemHostUnregister(c.as_ptr() as *mut _) }
                    .result()
                    .unwrap();
                reg += (t1 - t0).as_secs_f64();
                dma += (t2 - t1).as_secs_f64();
                unreg += t2.elapsed().as_secs_f64();
            }
            println!(
                "registered, {} MiB chunks, {}: {:.1} GB/s serial (register {:.1} GB/s, DMA {:.1} GB/s, unregister {:.1} GB/s)",
                chunk / MIB,
                if prefault { "pre-faulted" } else { "fresh mapping" },
                gbps(n, t),
                n as f64 / reg / 1e9,
                n as f64 / dma / 1e9,
                n as f64 / unreg / 1e9
            );
        }
    }
    // 5. Registration from several threads at once (fresh mapping, 256 MiB chunks).
    for threads in [2usize, 4] {
        let m = Arc::new(map(&path));
        let t = Instant::now();
        let chunks: Vec<(usize, usize)> = (0..n.div_ceil(256 * MIB))
            .map(|i| (i * 256 * MIB, ((i + 1) * 256 * MIB).min(n)))
            .collect();
        std::thread::scope(|sc| {
            for th in 0..threads {
                let (m, ctx, chunks) = (m.clone(), ctx.clone(), &chunks);
                sc.spawn(move || {
                    ctx.bind_to_thread().unwrap();
                    for &(a, b) in chunks.iter().skip(th).step_by(threads) {
                        let c = &m[a..b];
                        unsafe {
                            sys::cuMemHostRegister_v2(
                                c.as_ptr() as *mut _,
                                c.len(),
                                sys::CU_MEMHOSTREGISTER_READ_ONLY,
                            )
                        }
                        .result()
                        .unwrap();
                        unsafe { sys::cuMemHostUnregister(c.as_ptr() as *mut _) }
                            .result()
                            .unwrap();
                    }
                });
            }
        });
        println!(
            "register+unregister only, 256 MiB chunks, {threads} threads: {:.1} GB/s",
            gbps(n, t)
        );
    }
    // 6. Pageable H2D straight from the mapping (no registration), 64 MiB copies.
    {
        let t = Instant::now();
        for (i, c) in src.chunks(64 * MIB).enumerate() {
            unsafe {
                result::memcpy_htod_async(dptr + (i * 64 * MIB) as u64, c, stream.cu_stream())
            }
            .unwrap();
        }
        stream.synchronize().unwrap();
        println!(
            "pageable H2D from the mapping, 64 MiB copies: {:.1} GB/s",
            gbps(n, t)
        );
    }
}
