//! The trainer's own device buffers (`initialize_into` on a device): loaded in place, kept by a
//! host load.

use super::*;

/// A trainer's device buffer as it presents itself (address, size, device), to be refused
/// before the load touches it.
struct Claimed {
    ptr: u64,
    bytes: usize,
    device: String,
}

impl crate::base::device::DeviceMemory for Claimed {
    fn ptr(&self) -> u64 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.bytes
    }
    fn read(&self, _: &mut [u8]) -> crate::Result<()> {
        Err(ErrorKind::InvalidArgument("a claimed buffer is never read".into()).into())
    }
    fn device(&self) -> String {
        self.device.clone()
    }
    #[cfg(feature = "cuda")]
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[test]
fn trainer_buffers_are_loaded_in_place() {
    let dir = fixture("partitioned_axes");
    let mut cpu = store_for(&dir);
    cpu.initialize(Device::Cpu).unwrap();
    let link = HostLink::default();
    let mut gpu = store_for(&dir);
    let v = gpu
        .variables()
        .find(|v| v.name.starts_with("axis1/"))
        .unwrap()
        .clone();
    let bytes = cpu.value(&v.name).unwrap().bytes().unwrap().len();
    // The wrong size is refused before anything is loaded.
    let small = DeviceBuffer {
        mem: link.alloc_trainer(bytes - 1),
    };
    assert_eq!((small.len(), small.is_empty()), (bytes - 1, false));
    let debug = format!("{small:?}");
    assert_eq!(
        debug,
        format!(
            "DeviceBuffer {{ ptr: {:#x}, len: {} }}",
            small.mem.ptr(),
            bytes - 1
        )
    );
    let none = DeviceBuffer {
        mem: std::sync::Arc::new(Claimed {
            ptr: small.mem.ptr(),
            bytes: 0,
            device: link.device(),
        }),
    };
    assert_eq!((none.len(), none.is_empty()), (0, true));
    gpu.set_device_buffer(&v.name, small).unwrap();
    let err = gpu
        .initialize_on(&link, &LoadOptions::default(), tiny())
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::BufferSize { .. }), "{err}");
    // So is one of the right size on another device, one not aligned to the elements (float32),
    // and one at an address with the top bit set (the planner's mark of scratch offsets), each
    // alone, and the store is left uninitialized.
    let at = link.alloc_trainer(bytes).ptr();
    for (ptr, device) in [
        (at, "emulated:1".to_string()),
        (at + 2, link.device()),
        (at | 1 << 63, link.device()),
    ] {
        let mem = std::sync::Arc::new(Claimed { ptr, bytes, device });
        gpu.set_device_buffer(&v.name, DeviceBuffer { mem })
            .unwrap();
        let err = gpu
            .initialize_on(&link, &LoadOptions::default(), tiny())
            .unwrap_err();
        let what = format!("{ptr:#x}: {err}");
        assert!(
            matches!(err.kind(), ErrorKind::BadVariable { .. }),
            "{what}"
        );
        assert!(
            err.to_string()
                .contains("must be on emulated:0 and aligned to 4 bytes"),
            "{what}"
        );
        assert!(!gpu.is_initialized(), "{what}");
    }
    let mem = link.alloc_trainer(bytes);
    let ptr = mem.ptr();
    gpu.set_device_buffer(&v.name, DeviceBuffer { mem })
        .unwrap();
    gpu.initialize_on(&link, &LoadOptions::default(), tiny())
        .unwrap();
    assert_eq!(gpu.device_value(&v.name).unwrap().device_ptr(), ptr);
    assert_same(&cpu, &gpu, "trainer buffer");
    // The whole of a partitioned variable is the host's, once fetched.
    let pv = gpu.partitioned_variables().next().unwrap().name.clone();
    let e = gpu.partitioned_value(&pv).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("is in device memory: fetch_to_host first"),
        "{e}"
    );
    // A buffer for a part another rank owns would be left as it was: refused before anything
    // is loaded.
    let mut ranked = store_for(&dir);
    let index = v.part.as_ref().expect("a part").index;
    let mem = link.alloc_trainer(bytes);
    ranked
        .set_device_buffer(&v.name, DeviceBuffer { mem })
        .unwrap();
    let options = LoadOptions::new().rank((index + 1) % 2, 2);
    let err = ranked.initialize_on(&link, &options, tiny()).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::BadVariable { name, reason }
            if *name == v.name && reason.contains("does not own it")),
        "{err}"
    );
    assert!(!ranked.is_initialized());
    // Also where the rank owns nothing on a GPU (the other variables here in host memory, no
    // part its own), so that its load runs on the host: no GPU is asked for, and the buffer is
    // still refused.
    ranked.place_with(|v| v.part.is_none().then_some(Device::Cpu));
    let options = LoadOptions::new().rank(999, 1000);
    let err = ranked
        .initialize_with(Device::Cuda(0), &options)
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::BadVariable { name, reason }
            if *name == v.name && reason.contains("rank 999 of 1000 does not own it")),
        "{err}"
    );
    assert!(!ranked.is_initialized());
    assert!(gpu
        .set_device_buffer(
            "no/such",
            DeviceBuffer {
                mem: link.alloc_trainer(4)
            }
        )
        .is_err());
}

#[test]
fn a_host_load_keeps_the_trainers_device_buffers() {
    // Found in review: a CPU initialize forgot the buffers set for the next GPU load.
    let dir = fixture("partitioned_axes");
    let link = HostLink::default();
    let mut store = store_for(&dir);
    let v = store
        .variables()
        .find(|v| v.name.starts_with("axis1/"))
        .unwrap()
        .clone();
    let bytes = v.shape.iter().product::<u64>() as usize * v.dtype.size().unwrap();
    let mem = link.alloc_trainer(bytes);
    let ptr = mem.ptr();
    store
        .set_device_buffer(&v.name, DeviceBuffer { mem })
        .unwrap();
    store.initialize(Device::Cpu).unwrap();
    store
        .initialize_on(&link, &LoadOptions::default(), tiny())
        .unwrap();
    assert_eq!(store.device_value(&v.name).unwrap().device_ptr(), ptr);
}
