// What jresnet's oneDNN handlers share: one engine, one execution lock, reusable scratch buffers, the
// busy-time counters and the guard that turns C++ exceptions into FFI errors. The sources that include
// this header are compiled into one library; `inline` gives each function's statics one instance there.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace jresnet_native {

namespace ffi = xla::ffi;

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

inline dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Reusable, 64-byte aligned buffers, so a step does not page-fault fresh scratch memory on every call. One
// set serves the process: calls are serialised by ExecutionMutex(), which every caller holds.
inline void* SharedBuffer(int slot, size_t bytes) {
  static void* buffers[2] = {nullptr, nullptr};
  static size_t sizes[2] = {0, 0};
  if (sizes[slot] < bytes) {
    std::free(buffers[slot]);
    buffers[slot] = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (buffers[slot] == nullptr) {
      sizes[slot] = 0;
      throw std::bad_alloc();
    }
    sizes[slot] = bytes;
  }
  return buffers[slot];
}

// XLA CPU runs independent thunks concurrently (an input gradient beside a kernel gradient, say). Each
// oneDNN call already spreads over every core with OpenMP, so two at once would oversubscribe the cores:
// one call runs at a time.
inline std::mutex& ExecutionMutex() {
  static std::mutex mutex;
  return mutex;
}

// Wall time spent inside oneDNN (waiting for the mutex excluded), for profiling.
inline std::atomic<int64_t> busy_ns{0}, busy_calls{0};

// Runs `run` under the execution lock, timed; a C++ exception becomes an FFI error naming `what`.
template <typename Run>
ffi::Error Guarded(const char* what, Run run) {
  try {
    std::lock_guard<std::mutex> lock(ExecutionMutex());
    auto start = std::chrono::steady_clock::now();
    run();
    busy_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
    ++busy_calls;
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN (") + what + "): " + e.what());
  } catch (const std::exception& e) {  // e.g. bad_alloc: an exception must not leave an FFI handler
    return ffi::Error::Internal(std::string("jresnet oneDNN ") + what + ": " + e.what());
  } catch (...) {
    return ffi::Error::Internal(std::string("jresnet oneDNN ") + what + ": unknown C++ exception");
  }
  return ffi::Error::Success();
}

// Executes `primitive` with `args` and a scratchpad of `scratchpad`'s size, and waits for it.
inline void ExecuteWithScratchpad(const dnnl::primitive& primitive, const dnnl::memory::desc& scratchpad,
                                  std::unordered_map<int, dnnl::memory> args) {
  dnnl::stream stream(Engine());
  args[DNNL_ARG_SCRATCHPAD] = dnnl::memory(scratchpad, Engine(), SharedBuffer(0, scratchpad.get_size()));
  primitive.execute(stream, args);
  stream.wait();
}

}  // namespace jresnet_native
