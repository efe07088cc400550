//! xrt-sys as its users see it. Builds without XRT (this machine, CI) check the `XRT not found` path; the NPU test
//! is ignored and has never run (no machine we have has an NPU).

use std::time::Duration;

use xrt_sys::{available, instruction_words, Device, XrtError, MIN_XRT};

#[test]
fn without_xrt_opening_a_device_says_how_to_get_xrt_in_one_line() {
    if available() {
        return;
    }
    let err = Device::open(0).err().expect("a build without XRT cannot open a device");
    assert_eq!(err, XrtError::NotFound);
    let msg = err.to_string();
    assert!(msg.starts_with("XRT not found"), "{msg}");
    assert!(!msg.contains(['\n', '\r']), "{msg:?}");
    for needed in ["XILINX_XRT", MIN_XRT, "amdxdna", "rebuild"] {
        assert!(msg.contains(needed), "{msg} lacks {needed}");
    }
}

#[test]
fn without_xilinx_xrt_at_build_time_xrt_is_unavailable() {
    if option_env!("XILINX_XRT").is_none() {
        assert!(!available());
    }
}

/// Runs mlir-aie's `test/npu-xrt/add_one_using_dma` design (build it with aiecc; its runtime sequence takes
/// `(inA, inB, out)` of 64 i32 each and writes `inA + 1` to `out`) from `$XRT_SYS_ADD_ONE_DIR/{aie.xclbin,insts.bin}`.
/// Needs a Phoenix NPU, XRT >= 2.17 with amdxdna, and `XRT_HACK_UNSECURE_LOADING_XCLBIN=1`.
#[test]
#[ignore = "needs a Ryzen AI NPU, XRT >= 2.17 and an aiecc-built add_one_using_dma design"]
fn npu_add_one() -> Result<(), XrtError> {
    let dir = std::path::PathBuf::from(std::env::var("XRT_SYS_ADD_ONE_DIR").expect("XRT_SYS_ADD_ONE_DIR"));
    let xclbin = std::fs::read(dir.join("aie.xclbin")).expect("aie.xclbin");
    let instructions = instruction_words(&std::fs::read(dir.join("insts.bin")).expect("insts.bin"))?;

    let device = Device::open(0)?;
    let context = device.load(&xclbin)?;
    let input: Vec<i32> = (1..=64).collect();
    let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut in_a = context.buffer(bytes.len(), 0)?;
    let in_b = context.buffer(bytes.len(), 1)?;
    let out = context.buffer(bytes.len(), 2)?;
    in_a.write(&bytes)?;
    in_a.sync_to_device()?;
    context.run(&instructions, &[&in_a, &in_b, &out], Duration::from_secs(10))?;
    out.sync_from_device()?;
    let mut result = vec![0u8; bytes.len()];
    out.read(&mut result)?;
    let result: Vec<i32> = result.chunks_exact(4).map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
    let expected: Vec<i32> = input.iter().map(|v| v + 1).collect();
    assert_eq!(result, expected);
    Ok(())
}
