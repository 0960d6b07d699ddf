// Deadline logic of jitc::Watchdog with an injected clock. Compiled and run by
// tests/shim/test_watchdog.py against csrc/watchdog.cpp alone. Prints one line per
// failed check and exits non-zero if any failed.
#include <cstdio>
#include <cstring>

#include "watchdog.h"

static int g_failed = 0;
#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);           \
      ++g_failed;                                                           \
    }                                                                       \
  } while (0)

using jitc::Watchdog;
using jitc::WatchdogConfig;

constexpr uint64_t S = 1000000000ull;  // one second in ns

static WatchdogConfig derived() {
  WatchdogConfig c;
  c.floor_s = 30;
  c.multiple = 5;
  c.initial_s = 600;
  c.min_samples = 3;
  return c;
}

static void nothing_before_first_step() {
  WatchdogConfig c = derived();
  c.fixed_timeout_s = 1;
  Watchdog w(c);
  CHECK(w.tick(1000 * S).empty());
  int64_t r = w.region_begin(1, "allreduce", 0.5, 0);
  CHECK(r > 0);
  CHECK(w.tick(5000 * S).empty());      // region before the first step: not tracked
}

static void fixed_timeout_reported_once() {
  WatchdogConfig c = derived();
  c.fixed_timeout_s = 2;
  Watchdog w(c);
  w.step_begin(7, 100 * S);
  CHECK(w.tick(101 * S).empty());
  CHECK(w.tick(102 * S).empty());       // exactly at the deadline: not yet
  auto r = w.tick(102 * S + 1000);
  CHECK(r.size() == 1);
  if (r.size() == 1) {
    CHECK(!r[0].is_region);
    CHECK(r[0].step == 7);
    CHECK(r[0].timeout_s == 2);
    CHECK(r[0].elapsed_s > 2.0 && r[0].elapsed_s < 2.001);
  }
  CHECK(w.tick(200 * S).empty());       // once per step
  w.step_begin(8, 200 * S);             // a new step re-arms
  CHECK(w.tick(201 * S).empty());
  CHECK(w.tick(203 * S).size() == 1);
}

static void nothing_after_finished() {
  WatchdogConfig c = derived();
  c.fixed_timeout_s = 1;
  Watchdog w(c);
  w.step_begin(0, 0);
  w.steps_finished(S / 2);
  CHECK(!w.armed());
  CHECK(w.tick(100 * S).empty());
}

static void derived_timeout() {
  Watchdog w(derived());
  CHECK(w.timeout_s() == 600);          // nothing known yet
  uint64_t t = 0;
  w.step_begin(0, t);
  t += 10 * S; w.step_begin(1, t);      // 1 duration
  t += 10 * S; w.step_begin(2, t);      // 2
  CHECK(w.timeout_s() == 600);
  t += 10 * S; w.step_begin(3, t);      // 3 durations of 10 s: 5 x 10 = 50 s
  CHECK(w.timeout_s() == 50);
  CHECK(w.last_step_s() == 10);
  // The deadline is 50 s now: 49 s is fine, 51 s is a hang.
  CHECK(w.tick(t + 49 * S).empty());
  CHECK(w.tick(t + 51 * S).size() == 1);
}

static void derived_floor_and_p95() {
  Watchdog w(derived());
  uint64_t t = 0;
  w.step_begin(0, t);
  for (int i = 1; i <= 100; ++i) {      // fast steps: 5 x 0.1 s is below the floor
    t += S / 10;
    w.step_begin(i, t);
  }
  CHECK(w.timeout_s() == 30);
  // Of the last 64 durations, 3 are slow (20 s) and 61 fast: 3/64 < 5%, p95 stays fast.
  for (int i = 0; i < 61; ++i) { t += S / 10; w.step_begin(200 + i, t); }
  for (int i = 0; i < 3; ++i) { t += 20 * S; w.step_begin(300 + i, t); }
  CHECK(w.timeout_s() == 30);
  // 4 slow ones of 64 (6%): the p95 is now a slow one, 5 x 20 = 100 s.
  t += 20 * S; w.step_begin(400, t);
  CHECK(w.timeout_s() > 99.99 && w.timeout_s() < 100.01);
  // Only the last 64 count: 64 fast steps later it is back to the floor.
  for (int i = 0; i < 64; ++i) { t += S / 10; w.step_begin(500 + i, t); }
  CHECK(w.timeout_s() == 30);
}

static void region_deadlines() {
  WatchdogConfig c = derived();
  c.fixed_timeout_s = 100;
  Watchdog w(c);
  w.step_begin(4, 0);
  int64_t a = w.region_begin(1, "allreduce", 2.0, 10 * S);   // own deadline 2 s
  int64_t b = w.region_begin(2, "sync", 0, 10 * S);          // the hang timeout (100 s)
  CHECK(a > 0 && b > 0 && a != b);
  CHECK(w.tick(11 * S).empty());
  auto r = w.tick(12 * S + 1);
  CHECK(r.size() == 1);
  if (r.size() == 1) {
    CHECK(r[0].is_region);
    CHECK(r[0].region_id == a);
    CHECK(std::strcmp(r[0].region_name.c_str(), "allreduce") == 0);
    CHECK(r[0].region_kind == 1);
    CHECK(r[0].step == 4);
    CHECK(r[0].timeout_s == 2.0);
  }
  CHECK(w.tick(13 * S).empty());        // once per region
  CHECK(w.region_end(a));
  CHECK(!w.region_end(a));              // already closed
  // An ended region never fires.
  int64_t c2 = w.region_begin(1, "bcast", 1.0, 20 * S);
  CHECK(w.region_end(c2));
  CHECK(w.tick(30 * S).empty());
  // b and the step both hit 100 s: two reports, then silence.
  auto r2 = w.tick(111 * S);
  CHECK(r2.size() == 2);
  CHECK(w.tick(120 * S).empty());
}

int main() {
  nothing_before_first_step();
  fixed_timeout_reported_once();
  nothing_after_finished();
  derived_timeout();
  derived_floor_and_p95();
  region_deadlines();
  if (g_failed == 0) std::printf("OK\n");
  return g_failed == 0 ? 0 : 1;
}
