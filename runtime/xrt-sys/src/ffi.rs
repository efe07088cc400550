//! The unsafe layer (built with `cfg(xrt)` only): the shim's C functions and owning handles around them. Callers in
//! `lib.rs` have already checked sizes and argument order; this layer only moves pointers across.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::marker::{PhantomData, PhantomPinned};
use std::ptr::{self, NonNull};

use crate::{one_line, XrtError};

macro_rules! opaque {
    ($name:ident) => {
        #[repr(C)]
        pub(crate) struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    };
}
opaque!(RawDevice);
opaque!(RawContext);
opaque!(RawBo);

extern "C" {
    fn xrt_shim_device_open(index: c_uint, out: *mut *mut RawDevice, err: *mut c_char, err_len: usize) -> c_int;
    fn xrt_shim_device_free(dev: *mut RawDevice);
    fn xrt_shim_context_new(
        dev: *mut RawDevice,
        xclbin: *const u8,
        xclbin_len: usize,
        kernel_prefix: *const c_char,
        out: *mut *mut RawContext,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn xrt_shim_context_free(ctx: *mut RawContext);
    fn xrt_shim_bo_new(
        ctx: *mut RawContext,
        bytes: usize,
        kernel_arg: c_int,
        out: *mut *mut RawBo,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn xrt_shim_bo_free(bo: *mut RawBo);
    fn xrt_shim_bo_write(bo: *mut RawBo, src: *const c_void, len: usize, err: *mut c_char, err_len: usize) -> c_int;
    fn xrt_shim_bo_read(bo: *mut RawBo, dst: *mut c_void, len: usize, err: *mut c_char, err_len: usize) -> c_int;
    fn xrt_shim_bo_sync(bo: *mut RawBo, to_device: c_int, err: *mut c_char, err_len: usize) -> c_int;
    fn xrt_shim_run(
        ctx: *mut RawContext,
        instr: *const u32,
        n_words: usize,
        args: *const *mut RawBo,
        n_args: usize,
        timeout_ms: u32,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

/// Runs one shim call with an error buffer and turns a non-zero status into `XrtError::Xrt`.
fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), XrtError> {
    let mut err = [0u8; 1024];
    if f(err.as_mut_ptr().cast(), err.len()) == 0 {
        return Ok(());
    }
    let msg = CStr::from_bytes_until_nul(&err).map_or_else(|_| "no message".into(), CStr::to_string_lossy);
    Err(XrtError::Xrt(one_line(&msg)))
}

fn handle<T>(raw: *mut T) -> Result<NonNull<T>, XrtError> {
    NonNull::new(raw).ok_or_else(|| XrtError::Xrt("the shim reported success but returned no handle".into()))
}

pub(crate) struct Device(NonNull<RawDevice>);

impl Device {
    pub(crate) fn open(index: u32) -> Result<Device, XrtError> {
        let mut out = ptr::null_mut();
        // SAFETY: `out` is a valid place for the handle and `err` points to `len` writable bytes.
        call(|err, len| unsafe { xrt_shim_device_open(index, &mut out, err, len) })?;
        handle(out).map(Device)
    }

    pub(crate) fn load(&self, xclbin: &[u8], kernel_prefix: &CStr) -> Result<Context, XrtError> {
        let mut out = ptr::null_mut();
        // SAFETY: the device handle is live; the shim copies `xclbin` and reads `kernel_prefix` (NUL-terminated)
        // before returning and keeps neither pointer.
        call(|err, len| unsafe {
            xrt_shim_context_new(
                self.0.as_ptr(),
                xclbin.as_ptr(),
                xclbin.len(),
                kernel_prefix.as_ptr(),
                &mut out,
                err,
                len,
            )
        })?;
        handle(out).map(Context)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the handle came from `xrt_shim_device_open` and is freed once, here; contexts hold their own
        // reference to the XRT device.
        unsafe { xrt_shim_device_free(self.0.as_ptr()) }
    }
}

pub(crate) struct Context(NonNull<RawContext>);

impl Context {
    pub(crate) fn buffer(&self, bytes: usize, kernel_arg: i32) -> Result<Bo, XrtError> {
        let mut out = ptr::null_mut();
        // SAFETY: the context handle is live and `out` is a valid place for the new handle.
        call(|err, len| unsafe { xrt_shim_bo_new(self.0.as_ptr(), bytes, kernel_arg, &mut out, err, len) })?;
        handle(out).map(Bo)
    }

    pub(crate) fn run(&self, instructions: &[u32], args: &[&Bo], timeout_ms: u32) -> Result<(), XrtError> {
        let args: Vec<*mut RawBo> = args.iter().map(|bo| bo.0.as_ptr()).collect();
        // SAFETY: the context and every buffer handle are live for the whole (blocking) call; the shim reads
        // `instructions.len()` words and `args.len()` handles and keeps neither slice.
        call(|err, len| unsafe {
            xrt_shim_run(
                self.0.as_ptr(),
                instructions.as_ptr(),
                instructions.len(),
                args.as_ptr(),
                args.len(),
                timeout_ms,
                err,
                len,
            )
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the handle came from `xrt_shim_context_new` and is freed once, here; buffers hold their own
        // references to what they need.
        unsafe { xrt_shim_context_free(self.0.as_ptr()) }
    }
}

pub(crate) struct Bo(NonNull<RawBo>);

impl Bo {
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), XrtError> {
        // SAFETY: the handle is live and `lib.rs` checked that `data` fits the buffer.
        call(|err, len| unsafe { xrt_shim_bo_write(self.0.as_ptr(), data.as_ptr().cast(), data.len(), err, len) })
    }

    pub(crate) fn read(&self, out: &mut [u8]) -> Result<(), XrtError> {
        // SAFETY: the handle is live, `out` is writable for its length, and `lib.rs` checked that it fits the buffer.
        call(|err, len| unsafe { xrt_shim_bo_read(self.0.as_ptr(), out.as_mut_ptr().cast(), out.len(), err, len) })
    }

    pub(crate) fn sync(&self, to_device: bool) -> Result<(), XrtError> {
        // SAFETY: the handle is live.
        call(|err, len| unsafe { xrt_shim_bo_sync(self.0.as_ptr(), c_int::from(to_device), err, len) })
    }
}

impl Drop for Bo {
    fn drop(&mut self) {
        // SAFETY: the handle came from `xrt_shim_bo_new` and is freed once, here.
        unsafe { xrt_shim_bo_free(self.0.as_ptr()) }
    }
}
