// The native watchdog: decides, from step and region timestamps, that the rank is hung.
//
// It never reads a clock itself: tick(now) takes the time as an argument so the deadline
// logic is tested with an injected clock (tests/shim/native/test_watchdog.cpp). The agent
// thread calls tick() every ~50 ms; the main thread only stores atomics in step_begin()
// (no lock, no syscall: it sits on the training loop's hot path). No Python anywhere (I5).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "config.h"

namespace jitc {

// The hang rule (config.h limits; its Python twin is jitc/limits.py hang_timeout()).
struct WatchdogConfig {
  double fixed_timeout_s = 0;                  // > 0: use this; else derive from step times
  double floor_s = limits::kHangFloorS;        // derived timeout never below
  double multiple = limits::kHangMultiple;     // derived = multiple x p95(last kWindow steps)
  double initial_s = limits::kHangInitialS;    // before `min_samples` step durations are known
  int min_samples = limits::kHangMinSamples;
};

struct HangReport {
  bool is_region = false;
  int64_t step = 0;             // the step that was running
  double elapsed_s = 0;         // since step / region begin
  double timeout_s = 0;         // the deadline that was exceeded
  int64_t region_id = 0;
  int region_kind = 0;
  std::string region_name;
};

class Watchdog {
 public:
  static constexpr int kWindow = limits::kHangWindow;

  explicit Watchdog(const WatchdogConfig& cfg) : cfg_(cfg) {}

  // Main thread (single writer). Records the previous step's duration, arms the deadline.
  void step_begin(int64_t step, uint64_t now_ns);
  // Loop finished: records the last duration, disarms everything.
  void steps_finished(uint64_t now_ns);
  // Any thread. deadline_s <= 0: the hang timeout in force. Returns an id > 0.
  int64_t region_begin(int kind, const char* name, double deadline_s, uint64_t now_ns);
  bool region_end(int64_t id);

  // Agent thread. Each exceeded step or region is reported exactly once. Nothing is
  // reported before the first step_begin or after steps_finished.
  std::vector<HangReport> tick(uint64_t now_ns);

  // The hang timeout now in force, seconds.
  double timeout_s() const;
  // Duration of the last completed step, seconds (0 before one is known).
  double last_step_s() const;
  bool armed() const { return armed_.load(std::memory_order_acquire); }

 private:
  struct Region {
    int64_t id;
    int kind;
    std::string name;
    uint64_t begin_ns;
    double deadline_s;
    bool reported;
  };

  void record_duration(uint64_t now_ns);

  WatchdogConfig cfg_;
  // Step state: written by the main thread, read by tick(). seq_ changes last (release)
  // so a reader that sees the same seq_ before and after its reads saw a consistent step.
  std::atomic<uint64_t> seq_{0};
  std::atomic<int64_t> step_{0};
  std::atomic<uint64_t> begin_ns_{0};
  std::atomic<bool> armed_{false};
  uint64_t reported_seq_ = 0;   // agent thread only
  // Ring of the last kWindow step durations (ns); approximate reads are fine.
  std::atomic<uint64_t> durations_[kWindow] = {};
  std::atomic<uint64_t> ndurations_{0};

  std::mutex regions_mu_;
  std::vector<Region> regions_;
  std::atomic<int64_t> next_region_{1};
};

}  // namespace jitc
