// GPU side of the snapshot engine (csrc/core.h): device-to-host copies for registered CUDA
// tensors, made with the *real* runtime functions on the shim's own non-blocking stream.
//
// Why a stream of our own: on a healthy rank stuck in a collective, the default stream and
// the training streams are queued behind the hung NCCL kernel; a copy there would never
// run. A stream created with cudaStreamNonBlocking does not synchronise with the legacy
// default stream, and the copy engines run beside the stuck kernel.
// Completion is polled with cudaStreamQuery (invariant I5: no blocking CUDA call).
#include <time.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "wrap.h"

namespace jitc {
namespace {

using namespace jitc::interpose;

constexpr int kMaxDevices = 64;
std::mutex g_streams_mu;
cudaStream_t g_streams[kMaxDevices];   // one per device, created on first use

// alloc_host() puts this header before each block so free_host() knows how it was made.
// 64 bytes keeps the user pointer 64-byte aligned.
struct alignas(64) HostHeader {
  uint64_t magic;
  int pinned;
};
constexpr uint64_t kMagic = 0x6a697463686f7374ull;   // "jitchost"

void sleep_us(long us) {
  struct timespec ts{us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, nullptr);
}

}  // namespace

// WARNING: on a timeout the copy may still be in flight into dst: the caller must not free
// or reuse dst (leak it) unless it knows the device is gone.
// dst should come from alloc_host(): with pageable memory the runtime stages the copy and
// cudaMemcpyAsync itself may wait for it.
bool device_to_host(void* dst, const void* src, size_t n, int device, double timeout_s,
                    const char** why) {
  const char* dummy;
  if (why == nullptr) why = &dummy;
  if (device < 0 || device >= kMaxDevices) {
    *why = "bad device index";
    return false;
  }
  Guard guard;   // these are the shim's own calls: not observed, no fault fires
  int previous = -1;
  if (real_cudart::cudaGetDevice(&previous) != cudaSuccess) {
    *why = "CUDA runtime not loaded or not initialised";
    return false;
  }
  struct Restore {
    int device;
    ~Restore() { if (device >= 0) real_cudart::cudaSetDevice(device); }
  } restore{previous};
  if (real_cudart::cudaSetDevice(device) != cudaSuccess) {
    *why = "cudaSetDevice failed";
    return false;
  }
  cudaStream_t stream;
  {
    std::lock_guard<std::mutex> lock(g_streams_mu);
    if (g_streams[device] == nullptr &&
        real_cudart::cudaStreamCreateWithFlags(&g_streams[device], cudaStreamNonBlocking) !=
            cudaSuccess) {
      g_streams[device] = nullptr;
      *why = "cudaStreamCreateWithFlags failed";
      return false;
    }
    stream = g_streams[device];
  }
  if (real_cudart::cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream) != cudaSuccess) {
    *why = "cudaMemcpyAsync failed";
    return false;
  }
  uint64_t deadline = jitc::now_ns() + static_cast<uint64_t>(timeout_s > 0 ? timeout_s * 1e9 : 0);
  long backoff_us = 20;
  for (;;) {
    cudaError_t r = real_cudart::cudaStreamQuery(stream);
    if (r == cudaSuccess) return true;
    if (r != cudaErrorNotReady) {
      *why = error_name(Api::Runtime, r);
      return false;
    }
    if (jitc::now_ns() >= deadline) {
      *why = "device-to-host copy timed out";
      return false;
    }
    sleep_us(backoff_us);
    if (backoff_us < 2000) backoff_us *= 2;
  }
}

void* alloc_host(size_t n) {
  size_t total = n + sizeof(HostHeader);
  void* block = nullptr;
  int pinned = 0;
  {
    Guard guard;
    if (real_cudart::cudaHostAlloc(&block, total, cudaHostAllocPortable) == cudaSuccess &&
        block != nullptr) {
      pinned = 1;
    } else {
      block = nullptr;
    }
  }
  if (block == nullptr && posix_memalign(&block, 64, total) != 0) return nullptr;
  auto* h = static_cast<HostHeader*>(block);
  h->magic = kMagic;
  h->pinned = pinned;
  return h + 1;
}

void free_host(void* p) {
  if (p == nullptr) return;
  auto* h = static_cast<HostHeader*>(p) - 1;
  if (h->magic != kMagic) return;   // not ours: leaking beats freeing the wrong way
  h->magic = 0;
  if (h->pinned) {
    Guard guard;
    real_cudart::cudaFreeHost(h);
  } else {
    std::free(h);
  }
}

}  // namespace jitc
