// The shim's process-wide state, shared by the C API, the agent thread, the signal
// handlers and the interposers.
//
// Hot-path fields are atomics that the main thread only stores (jitc_step_begin, jitc_mark);
// the agent thread reads them and does every send. Fields the signal handlers read are
// atomics or plain values written before the handlers are installed. The mutex guards only
// the optimizer-window / snapshot gate (invariant I1) and the command mailbox.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "failure.h"
#include "core.h"
#include "json.h"
#include "watchdog.h"

namespace jitc {

const char* phase_name(int phase);   // "idle" | "forward" | "backward" | "optimizer"

struct State {
  // Written by jitc_init before the agent and the handlers start; read-only afterwards.
  Config cfg;
  pid_t init_pid = 0;
  // Replaced only by a re-init while inactive; old ones are leaked on purpose because an
  // interposer on another thread may still hold the pointer.
  std::atomic<Watchdog*> watchdog{nullptr};

  std::atomic<int> fd{-1};                // supervisor channel, -1 = none
  std::atomic<int> wake_fd{-1};           // eventfd the agent polls (signal-safe write)

  // Progress, stored by the main thread.
  std::atomic<int64_t> completed{0};
  std::atomic<int> phase{0};
  std::atomic<uint64_t> marks{0};
  std::atomic<bool> stepping{false};      // between the first step_begin and steps_finished

  std::atomic<bool> goodbye_sent{false};
  std::atomic<bool> release_received{false};
  std::atomic<bool> orphaned{false};      // the supervisor went away
  std::atomic<bool> fatal_sent{false};    // one FAILURE from a dying process, not several
  std::atomic<bool> recovering{false};    // shim-only local recovery under way
  // This rank reported a fatal failure of its own (a SUSPECT kind, failure_kinds.def): its
  // state is never written, not even when a SIGTERM comes next.
  std::atomic<bool> suspect{false};
  std::atomic<bool> snapshot_running{false};  // mirror of the gate, for the SIGTERM handler
  std::atomic<uint64_t> term_pending_ns{0};   // SIGTERM held since (0 = none)


  static constexpr int kMaxPollers = 8;
  std::atomic<Poller> pollers[kMaxPollers] = {};
  std::atomic<int> npollers{0};

  // Gate between the optimizer window and snapshots (I1), and the command mailbox.
  std::mutex mu;
  std::condition_variable cv;
  bool window_open = false;
  std::atomic<bool> window_flag{false};   // mirror of window_open: step_begin skips the lock
  std::thread::id window_owner;           // the thread that opened it
  uint64_t window_since_ns = 0;
  bool torn = false;                      // a snapshot gave up on an open window this step
  bool snapshot_busy = false;

  // Deduplication of report_failure: (kind, error) once per step.
  std::mutex fail_mu;
  int64_t fail_step = -1;
  std::vector<std::string> fail_keys;
};

State& state();

// Wakes the agent thread now (async-signal-safe).
void wake_agent();

// Sends a JSON object built with w on the supervisor channel; false if there is none.
// Async-signal-safe (the writer and channel::send are).
bool send_msg(uint8_t type, json::Writer& w);

// Fills the fields every FAILURE carries (ts, rank, kind, severity, step, phase).
// Async-signal-safe.
void failure_header(json::Writer& w, FailureKind kind, Severity severity = Severity::Fatal);

// The optimizer window / snapshot gate. All waits bounded.
// Enter the window; waits while a snapshot runs. false on timeout.
bool window_enter(double timeout_s);
// Close the window (step_begin / steps_finished).
void window_close();
// Start a snapshot: waits for an open window to close. false (state torn) on timeout.
bool snapshot_enter(double timeout_s, std::string* why);
void snapshot_exit();
// STATE.usable's window half: the window is not stuck open and no snapshot gave up on it.
bool window_healthy(uint64_t now);

}  // namespace jitc
