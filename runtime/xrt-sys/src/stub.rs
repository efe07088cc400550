//! The layer for builds without XRT (no `cfg(xrt)`): opening a device fails with `XrtError::NotFound`, so no other
//! handle can exist. The handles are uninhabited and, like the real ones, neither `Send` nor `Sync`, so code that
//! builds here builds against XRT too.

use std::ffi::CStr;
use std::marker::PhantomData;

use crate::XrtError;

enum Never {}

pub(crate) struct Device(Never, PhantomData<*mut ()>);

impl Device {
    pub(crate) fn open(_index: u32) -> Result<Device, XrtError> {
        Err(XrtError::NotFound)
    }

    pub(crate) fn load(&self, _xclbin: &[u8], _kernel_prefix: &CStr) -> Result<Context, XrtError> {
        match self.0 {}
    }
}

pub(crate) struct Context(Never, PhantomData<*mut ()>);

impl Context {
    pub(crate) fn buffer(&self, _bytes: usize, _kernel_arg: i32) -> Result<Bo, XrtError> {
        match self.0 {}
    }

    pub(crate) fn run(&self, _instructions: &[u32], _args: &[&Bo], _timeout_ms: u32) -> Result<(), XrtError> {
        match self.0 {}
    }
}

pub(crate) struct Bo(Never, PhantomData<*mut ()>);

impl Bo {
    pub(crate) fn write(&mut self, _data: &[u8]) -> Result<(), XrtError> {
        match self.0 {}
    }

    pub(crate) fn read(&self, _out: &mut [u8]) -> Result<(), XrtError> {
        match self.0 {}
    }

    pub(crate) fn sync(&self, _to_device: bool) -> Result<(), XrtError> {
        match self.0 {}
    }
}
