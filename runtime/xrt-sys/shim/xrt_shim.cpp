// The XRT shim behind xrt-sys: XRT's C++ API (the only one with xrt::hw_context) behind an extern "C" face.
// Every entry point catches everything, so no C++ exception unwinds into Rust.

#include "xrt_shim.h"

#include <chrono>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "xrt/xrt_bo.h"
#include "xrt/xrt_device.h"
#if __has_include("xrt/xrt_hw_context.h")
#include "xrt/xrt_hw_context.h"
#else
#include "xrt/experimental/xrt_hw_context.h"
#endif
#include "xrt/xrt_kernel.h"

struct xrt_shim_device {
  xrt::device device;
};

struct xrt_shim_context {
  xrt::device device;
  xrt::xclbin xclbin;
  xrt::hw_context hw_context;
  xrt::kernel kernel;
  // Grown on demand and reused, so a decode loop does not allocate a bo per token.
  xrt::bo instr;
  size_t instr_capacity = 0;
  // The kernel's run handle, made at the first dispatch and reused by every later one (XRT lets a run start
  // again once it has completed); dropped after a run that did not complete, so the next starts afresh.
  xrt::run run;
};

struct xrt_shim_bo {
  xrt::bo bo;
};

namespace {

// The opcode mlir-aie's host code passes for "run this instruction stream".
constexpr uint64_t kRunInstructionsOpcode = 3;
// Kernel arguments: 0 opcode, 1 instruction bo, 2 instruction word count, 3.. runtime-sequence buffers.
constexpr int kInstrArg = 1;
constexpr int kFirstBufferArg = 3;

void set_error(char *err, size_t err_len, const std::string &msg) {
  if (err == nullptr || err_len == 0)
    return;
  size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

// Runs `body`, turning any exception into an error message and -1.
template <typename F> int guarded(const char *what, char *err, size_t err_len, F &&body) noexcept {
  try {
    body();
    return 0;
  } catch (const std::exception &e) {
    try {
      set_error(err, err_len, std::string(what) + ": " + e.what());
    } catch (...) {
      set_error(err, err_len, what);
    }
  } catch (...) {
    set_error(err, err_len, std::string(what) + ": unknown C++ exception");
  }
  return -1;
}

const char *state_name(ert_cmd_state state) {
  switch (state) {
  case ERT_CMD_STATE_NEW:
    return "NEW";
  case ERT_CMD_STATE_QUEUED:
    return "QUEUED";
  case ERT_CMD_STATE_RUNNING:
    return "RUNNING";
  case ERT_CMD_STATE_COMPLETED:
    return "COMPLETED";
  case ERT_CMD_STATE_ERROR:
    return "ERROR";
  case ERT_CMD_STATE_ABORT:
    return "ABORT";
  case ERT_CMD_STATE_SUBMITTED:
    return "SUBMITTED";
  case ERT_CMD_STATE_TIMEOUT:
    return "TIMEOUT";
  case ERT_CMD_STATE_NORESPONSE:
    return "NORESPONSE";
  default:
    return "UNKNOWN";
  }
}

std::string find_kernel(const xrt::xclbin &xclbin, const std::string &prefix) {
  std::string seen;
  for (const auto &k : xclbin.get_kernels()) {
    std::string name = k.get_name();
    if (name.compare(0, prefix.size(), prefix) == 0)
      return name;
    seen += seen.empty() ? name : ", " + name;
  }
  throw std::runtime_error("no kernel named " + prefix + "* in the xclbin (it has: " +
                           (seen.empty() ? std::string("none") : seen) + ")");
}

} // namespace

extern "C" {

int xrt_shim_device_open(unsigned int index, xrt_shim_device **out, char *err, size_t err_len) {
  return guarded("opening the device", err, err_len, [&] { *out = new xrt_shim_device{xrt::device(index)}; });
}

void xrt_shim_device_free(xrt_shim_device *dev) { delete dev; }

int xrt_shim_context_new(xrt_shim_device *dev, const uint8_t *xclbin, size_t xclbin_len, const char *kernel_prefix,
                         xrt_shim_context **out, char *err, size_t err_len) {
  return guarded("loading the xclbin", err, err_len, [&] {
    std::vector<char> image(reinterpret_cast<const char *>(xclbin), reinterpret_cast<const char *>(xclbin) + xclbin_len);
    xrt::xclbin loaded(image);
    std::string name = find_kernel(loaded, kernel_prefix);
    dev->device.register_xclbin(loaded);
    xrt::hw_context hw_context(dev->device, loaded.get_uuid());
    xrt::kernel kernel(hw_context, name);
    *out = new xrt_shim_context{dev->device, loaded, hw_context, kernel, xrt::bo(), 0, xrt::run()};
  });
}

void xrt_shim_context_free(xrt_shim_context *ctx) { delete ctx; }

int xrt_shim_bo_new(xrt_shim_context *ctx, size_t bytes, int kernel_arg, xrt_shim_bo **out, char *err,
                    size_t err_len) {
  return guarded("allocating a buffer", err, err_len, [&] {
    xrt::bo bo(ctx->device, bytes, xrt::bo::flags::host_only, ctx->kernel.group_id(kernel_arg));
    *out = new xrt_shim_bo{bo};
  });
}

void xrt_shim_bo_free(xrt_shim_bo *bo) { delete bo; }

int xrt_shim_bo_write(xrt_shim_bo *bo, const void *src, size_t len, char *err, size_t err_len) {
  return guarded("writing a buffer", err, err_len, [&] { bo->bo.write(src, len, 0); });
}

int xrt_shim_bo_read(xrt_shim_bo *bo, void *dst, size_t len, char *err, size_t err_len) {
  return guarded("reading a buffer", err, err_len, [&] { bo->bo.read(dst, len, 0); });
}

int xrt_shim_bo_sync(xrt_shim_bo *bo, int to_device, char *err, size_t err_len) {
  return guarded("syncing a buffer", err, err_len,
                 [&] { bo->bo.sync(to_device != 0 ? XCL_BO_SYNC_BO_TO_DEVICE : XCL_BO_SYNC_BO_FROM_DEVICE); });
}

int xrt_shim_run(xrt_shim_context *ctx, const uint32_t *instr, size_t n_words, xrt_shim_bo *const *args,
                 size_t n_args, uint32_t timeout_ms, char *err, size_t err_len) {
  return guarded("running the kernel", err, err_len, [&] {
    size_t bytes = n_words * sizeof(uint32_t);
    if (bytes > ctx->instr_capacity) {
      ctx->instr = xrt::bo(ctx->device, bytes, xrt::bo::flags::cacheable, ctx->kernel.group_id(kInstrArg));
      ctx->instr_capacity = bytes;
    }
    ctx->instr.write(instr, bytes, 0);
    ctx->instr.sync(XCL_BO_SYNC_BO_TO_DEVICE, bytes, 0);

    // 64-bit scalars: XRT copies min(argument size, value size) bytes, so this fits a 32- or 64-bit argument.
    uint64_t opcode = kRunInstructionsOpcode;
    uint64_t words = n_words;
    if (!ctx->run)
      ctx->run = xrt::run(ctx->kernel);
    xrt::run &run = ctx->run;
    run.set_arg(0, opcode);
    run.set_arg(kInstrArg, ctx->instr);
    run.set_arg(2, words);
    for (size_t i = 0; i < n_args; ++i)
      run.set_arg(kFirstBufferArg + static_cast<int>(i), args[i]->bo);
    run.start();

    ert_cmd_state state = run.wait(std::chrono::milliseconds(timeout_ms));
    if (state != ERT_CMD_STATE_COMPLETED) {
      // Whatever happened to it, this run handle is not started again.
      xrt::run failed = std::move(ctx->run);
      ctx->run = xrt::run();
      if (state == ERT_CMD_STATE_TIMEOUT) {
        // XRT leaves aborting a timed-out run to the caller; a failed abort must not hide the timeout.
        try {
          failed.abort();
        } catch (...) {
        }
        throw std::runtime_error("no completion within " + std::to_string(timeout_ms) + " ms (run aborted)");
      }
      throw std::runtime_error(std::string("the run ended in state ") + state_name(state) + " (" +
                               std::to_string(static_cast<int>(state)) + ")");
    }
  });
}

} // extern "C"
