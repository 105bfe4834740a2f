//! One read broadcast to every rank of a job (emulated NCCL).

use super::*;

/// Runs `initialize_broadcast_on` on `world` emulated ranks (threads, one emulated device each),
/// every rank with the store `make(rank)` builds; returns each rank's store, result and link.
fn broadcast_job(
    world: usize,
    root: usize,
    hub: &crate::gpu::emulated::Hub,
    links: &[HostLink],
    make: impl Fn(usize) -> VariableStore + Sync,
) -> Vec<(VariableStore, crate::Result<crate::LoadReport>)> {
    std::thread::scope(|s| {
        let jobs: Vec<_> = (0..world)
            .map(|rank| {
                let make = &make;
                let link = &links[rank];
                s.spawn(move || {
                    let mut store = make(rank);
                    let comm = crate::gpu::emulated::HostComm { hub, rank, link };
                    let r = store.initialize_broadcast_on(
                        Device::Cuda(0),
                        link,
                        &comm,
                        root,
                        &LoadOptions::default(),
                        tiny(),
                    );
                    (store, r)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap()).collect()
    })
}

#[test]
fn broadcast_gives_every_rank_the_roots_load() {
    for case in ["partitioned_axes", "repartition_v2", "dtypes/dtypes", "v1"] {
        let dir = fixture(case);
        let mut cpu = store_for(&dir);
        cpu.initialize(Device::Cpu).unwrap();
        let hub = crate::gpu::emulated::Hub::new(3);
        let links = HostLink::devices(3);
        let make = |_| {
            // A variable the checkpoint initializes, placed on the host: every rank reads it.
            let mut s = store_for(&dir);
            let first = s
                .variables()
                .find(|v| v.part.is_none() && s.pending(&v.name).is_some())
                .unwrap()
                .name
                .clone();
            s.set_device(&first, Device::Cpu).unwrap();
            s
        };
        let done = broadcast_job(3, 1, &hub, &links, make);
        let mut sent = None;
        for (rank, (store, r)) in done.iter().enumerate() {
            let what = format!("{case} rank {rank}");
            let report = r.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_same(&cpu, store, &what);
            let d = report.device.as_ref().unwrap();
            assert_eq!(*sent.get_or_insert(d.broadcast_bytes), d.broadcast_bytes);
            if rank == 1 {
                assert!(d.staged_bytes > 0, "{what}: the root reads");
            } else {
                assert_eq!(d.staged_bytes, 0, "{what}: only the root uploads");
                let root = done[1].1.as_ref().unwrap().stored_bytes;
                assert!(
                    0 < report.stored_bytes && report.stored_bytes < root,
                    "{what}"
                );
            }
        }
        assert!(sent.unwrap() > 0);
        for l in &links {
            assert_eq!(l.still_registered(), 0);
        }
    }
}

/// Every rank of a broadcast job failed and kept nothing: rank `failing` with `own` in its error,
/// the others with `others`.
fn all_failed(
    done: &[(VariableStore, crate::Result<crate::LoadReport>)],
    failing: usize,
    own: &str,
    others: &str,
) {
    for (rank, (store, r)) in done.iter().enumerate() {
        let err = r.as_ref().unwrap_err().to_string();
        let want = if rank == failing { own } else { others };
        assert!(err.contains(want), "rank {rank}: {err}");
        assert!(!store.is_initialized(), "rank {rank}");
    }
}

#[test]
fn a_broadcast_fails_on_every_rank_or_on_none() {
    let dir = fixture("partitioned_axes");
    // The root's load fails: every rank fails, none keeps anything.
    let hub = crate::gpu::emulated::Hub::new(3);
    let links = HostLink::devices(3);
    links[0].fail_copy_at.store(2, Ordering::Relaxed);
    let done = broadcast_job(3, 0, &hub, &links, |_| store_for(&dir));
    all_failed(&done, 0, "failed (emulated)", "another rank failed to load");
    for (rank, link) in links.iter().enumerate() {
        assert_eq!(link.live_allocations(), 0, "rank {rank}");
    }
    drop(done);
    // The broadcast itself fails: every rank drops its values.
    let hub = crate::gpu::emulated::Hub::new(2);
    hub.fail_broadcast.store(true, Ordering::Relaxed);
    let links = HostLink::devices(2);
    let done = broadcast_job(2, 1, &hub, &links, |_| store_for(&dir));
    for (rank, (store, r)) in done.iter().enumerate() {
        assert!(r
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("broadcast failed"));
        assert!(!store.is_initialized(), "rank {rank}");
        assert_eq!(store.device_values().count(), 0);
    }
    drop(done);
    for l in &links {
        assert_eq!(l.live_allocations(), 0);
    }
    // The broadcast fails on one rank only: the last agreement fails the others too, and a
    // trainer's buffer handed in is handed back.
    let hub = crate::gpu::emulated::Hub::new(3);
    hub.fail_broadcast_rank.store(2, Ordering::Relaxed);
    let links = HostLink::devices(3);
    let done = broadcast_job(3, 0, &hub, &links, |rank| {
        let mut s = store_for(&dir);
        if rank == 1 {
            let bytes = crate::base::slice::num_elements(&[5, 3]).unwrap() as usize * 4;
            let mem = links[1].alloc_trainer(bytes);
            s.set_device_buffer("unmapped/ones", DeviceBuffer { mem })
                .unwrap();
        }
        s
    });
    all_failed(
        &done,
        2,
        "broadcast failed (emulated)",
        "another rank's broadcast failed",
    );
    assert_eq!(
        done[1].0.device_buffers.len(),
        1,
        "the trainer's buffer is handed back"
    );
    drop(done);
    // Ranks that name different roots: refused by all before anything is read.
    let hub = crate::gpu::emulated::Hub::new(2);
    let links = HostLink::devices(2);
    let done = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..2)
            .map(|rank| {
                let (hub, link, dir) = (&hub, &links[rank], &dir);
                s.spawn(move || {
                    let mut store = store_for(dir);
                    let comm = crate::gpu::emulated::HostComm { hub, rank, link };
                    store.initialize_broadcast_on(
                        Device::Cuda(0),
                        link,
                        &comm,
                        rank, // each rank thinks it is the root
                        &LoadOptions::default(),
                        tiny(),
                    )
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (rank, r) in done.iter().enumerate() {
        let err = r.as_ref().unwrap_err().to_string();
        assert!(err.contains("name the same root"), "rank {rank}: {err}");
        assert_eq!(links[rank].copies.load(Ordering::Relaxed), 0);
    }
    // Ranks with different models: every rank refuses before reading anything.
    let hub = crate::gpu::emulated::Hub::new(3);
    let links = HostLink::devices(3);
    let done = broadcast_job(3, 0, &hub, &links, |rank| {
        let mut s = store_for(&dir);
        if rank == 2 {
            s.get_variable("extra", &[2], DType::F32, Init::Zeros)
                .unwrap();
        }
        s
    });
    for (rank, (_, r)) in done.iter().enumerate() {
        let err = r.as_ref().unwrap_err().to_string();
        assert!(
            err.contains("models or arguments differ"),
            "rank {rank}: {err}"
        );
        assert_eq!(links[rank].copies.load(Ordering::Relaxed), 0);
    }
    // A root that does not exist, and a rank whose own arguments are refused.
    let hub = crate::gpu::emulated::Hub::new(2);
    let links = HostLink::devices(2);
    for (rank, (_, r)) in broadcast_job(2, 5, &hub, &links, |_| store_for(&dir))
        .iter()
        .enumerate()
    {
        let err = r.as_ref().unwrap_err().to_string();
        assert!(
            err.contains("root rank 5 does not exist"),
            "rank {rank}: {err}"
        );
    }
    let done = broadcast_job(2, 0, &hub, &links, |rank| {
        let mut s = store_for(&dir);
        if rank == 1 {
            s.set_replicas("unmapped/ones", &[Device::Cuda(0)]).unwrap();
        }
        s
    });
    let errs: Vec<String> = done
        .iter()
        .map(|(_, r)| r.as_ref().unwrap_err().to_string())
        .collect();
    assert!(
        errs[0].contains("another rank's arguments were refused"),
        "{}",
        errs[0]
    );
    assert!(errs[1].contains("has replicas"), "{}", errs[1]);
    // A rank that cannot load at all (its GPU is unusable) refuses in the first agreement: the
    // others fail there too, before anything is read, instead of waiting for it.
    let hub = crate::gpu::emulated::Hub::new(3);
    let links = HostLink::devices(3);
    let errs: Vec<String> = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..3)
            .map(|rank| {
                let (hub, link, dir) = (&hub, &links[rank], &dir);
                s.spawn(move || {
                    let mut store = store_for(dir);
                    let comm = crate::gpu::emulated::HostComm { hub, rank, link };
                    let options = LoadOptions::default();
                    if rank == 2 {
                        let why = ErrorKind::DeviceUnavailable {
                            device: "cuda:2".into(),
                            reason: "unusable (emulated)".into(),
                        };
                        return store.refuse_broadcast(
                            &comm,
                            Device::Cuda(0),
                            0,
                            &options,
                            why.into(),
                        );
                    }
                    let r = store.initialize_broadcast_on(
                        Device::Cuda(0),
                        link,
                        &comm,
                        0,
                        &options,
                        tiny(),
                    );
                    assert!(!store.is_initialized());
                    r.unwrap_err()
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap().to_string())
            .collect()
    });
    for (rank, err) in errs.iter().enumerate() {
        let want = match rank {
            2 => "unusable (emulated)",
            _ => "another rank's arguments were refused",
        };
        assert!(err.contains(want), "rank {rank}: {err}");
        assert_eq!(links[rank].copies.load(Ordering::Relaxed), 0, "rank {rank}");
    }
}
