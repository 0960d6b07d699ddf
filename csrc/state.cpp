// Process state and the optimizer-window / snapshot gate. See state.h.
#include "state.h"

#include <unistd.h>

#include <chrono>

#include "channel.h"

namespace jitc {

const char* phase_name(int phase) {
  switch (phase) {
    case 1: return "forward";
    case 2: return "backward";
    case 3: return "optimizer";
    default: return "idle";
  }
}

namespace hot {
std::atomic<bool> active{false};
std::atomic<uint32_t> armed_faults{0};
}  // namespace hot

State& state() {
  // Never destroyed: handlers and the agent may still read it during process exit.
  static State* s = new State();
  return *s;
}

void wake_agent() {
  int fd = state().wake_fd.load(std::memory_order_acquire);
  if (fd < 0) return;
  uint64_t one = 1;
  ssize_t ignored = write(fd, &one, sizeof one);
  (void)ignored;
}

bool send_msg(uint8_t type, json::Writer& w) {
  int fd = state().fd.load(std::memory_order_acquire);
  if (fd < 0) return false;
  size_t n = w.finish();
  if (n == 0) return false;
  return channel::send(fd, type, w.data(), n);
}

void failure_header(json::Writer& w, FailureKind kind, Severity severity) {
  State& s = state();
  w.ts()
      .i64("rank", s.cfg.rank)
      .str("kind", kind_name(kind))
      .str("severity", severity_name(severity))
      .i64("step", s.completed.load(std::memory_order_relaxed))
      .str("phase", phase_name(s.phase.load(std::memory_order_relaxed)));
}

namespace {
std::chrono::steady_clock::time_point deadline_after(double timeout_s) {
  if (timeout_s < 0) timeout_s = 0;
  return std::chrono::steady_clock::now() +
         std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6));
}
}  // namespace

bool window_enter(double timeout_s) {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  if (!s.cv.wait_until(lock, deadline_after(timeout_s), [&] { return !s.snapshot_busy; }))
    return false;
  if (!s.window_open) s.window_since_ns = now_ns();
  s.window_open = true;
  s.window_owner = std::this_thread::get_id();
  s.window_flag.store(true, std::memory_order_release);
  return true;
}

void window_close() {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.window_open = false;
    s.window_flag.store(false, std::memory_order_release);
    s.torn = false;
  }
  s.cv.notify_all();
}

bool snapshot_enter(double timeout_s, std::string* why) {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  // The thread that holds the window open cannot wait for itself to close it.
  if (s.window_open && s.window_owner == std::this_thread::get_id()) {
    s.torn = true;
    *why = "optimizer window open (held by the calling thread)";
    return false;
  }
  bool ok = s.cv.wait_until(lock, deadline_after(timeout_s),
                            [&] { return !s.window_open && !s.snapshot_busy; });
  if (!ok) {
    if (s.window_open) {
      s.torn = true;
      *why = "optimizer window open";
    } else {
      *why = "another snapshot in progress";
    }
    return false;
  }
  s.snapshot_busy = true;
  s.snapshot_running.store(true, std::memory_order_release);
  return true;
}

void snapshot_exit() {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.snapshot_busy = false;
    s.snapshot_running.store(false, std::memory_order_release);
  }
  s.cv.notify_all();
  wake_agent();  // a held SIGTERM may now be re-raised
}

bool window_healthy(uint64_t now) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.torn) return false;
  if (!s.window_open) return true;
  return now - s.window_since_ns <= static_cast<uint64_t>(limits::kWindowStuckS * 1e9);
}

}  // namespace jitc
