/* C face of the XRT shim that xrt-sys links when XRT >= 2.17 is found.
 *
 * Handles are opaque and owned by the caller: what a _new or _open call returns is released with
 * the matching _free function.
 * Every fallible call returns 0 on success. On failure it returns -1 and writes a NUL-terminated message (cut to
 * err_len bytes) into err; no C++ exception leaves these functions. */
#ifndef UNICORN_XRT_SHIM_H
#define UNICORN_XRT_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xrt_shim_device xrt_shim_device;
typedef struct xrt_shim_context xrt_shim_context;
typedef struct xrt_shim_bo xrt_shim_bo;

/* Opens XRT device `index` (0 is the first NPU). */
int xrt_shim_device_open(unsigned int index, xrt_shim_device **out, char *err, size_t err_len);
void xrt_shim_device_free(xrt_shim_device *dev);

/* Loads an xclbin image from memory, registers it with the device, makes a hardware context on its uuid and opens the
 * first kernel whose name starts with `kernel_prefix`. The context keeps its own reference to the device. */
int xrt_shim_context_new(xrt_shim_device *dev, const uint8_t *xclbin, size_t xclbin_len, const char *kernel_prefix,
                         xrt_shim_context **out, char *err, size_t err_len);
void xrt_shim_context_free(xrt_shim_context *ctx);

/* Allocates a host-only buffer of `bytes` bytes in the memory group of kernel argument `kernel_arg`. */
int xrt_shim_bo_new(xrt_shim_context *ctx, size_t bytes, int kernel_arg, xrt_shim_bo **out, char *err, size_t err_len);
void xrt_shim_bo_free(xrt_shim_bo *bo);

/* Copy between host memory and the buffer's host backing store, from offset 0. */
int xrt_shim_bo_write(xrt_shim_bo *bo, const void *src, size_t len, char *err, size_t err_len);
int xrt_shim_bo_read(xrt_shim_bo *bo, void *dst, size_t len, char *err, size_t err_len);

/* Syncs the whole buffer: host to device when to_device is non-zero, device to host otherwise. */
int xrt_shim_bo_sync(xrt_shim_bo *bo, int to_device, char *err, size_t err_len);

/* Copies the instruction words into the context's instruction buffer, syncs it, runs
 * kernel(3, instr_bo, n_words, args[0], args[1], ...) and waits up to timeout_ms (aborting the run on timeout). */
int xrt_shim_run(xrt_shim_context *ctx, const uint32_t *instr, size_t n_words, xrt_shim_bo *const *args,
                 size_t n_args, uint32_t timeout_ms, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
