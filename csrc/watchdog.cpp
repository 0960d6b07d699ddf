// Deadline logic of the native watchdog. See watchdog.h.
#include "watchdog.h"

#include <algorithm>

namespace jitc {

void Watchdog::record_duration(uint64_t now_ns) {
  if (!armed_.load(std::memory_order_relaxed)) return;
  uint64_t begin = begin_ns_.load(std::memory_order_relaxed);
  if (now_ns <= begin) return;
  uint64_t n = ndurations_.load(std::memory_order_relaxed);
  durations_[n % kWindow].store(now_ns - begin, std::memory_order_relaxed);
  ndurations_.store(n + 1, std::memory_order_release);
}

void Watchdog::step_begin(int64_t step, uint64_t now_ns) {
  record_duration(now_ns);
  step_.store(step, std::memory_order_relaxed);
  begin_ns_.store(now_ns, std::memory_order_relaxed);
  armed_.store(true, std::memory_order_relaxed);
  seq_.fetch_add(1, std::memory_order_release);
}

void Watchdog::steps_finished(uint64_t now_ns) {
  record_duration(now_ns);
  armed_.store(false, std::memory_order_relaxed);
  seq_.fetch_add(1, std::memory_order_release);
}

int64_t Watchdog::region_begin(int kind, const char* name, double deadline_s, uint64_t now_ns) {
  int64_t id = next_region_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(regions_mu_);
  regions_.push_back(Region{id, kind, name != nullptr ? name : "", now_ns, deadline_s, false});
  return id;
}

bool Watchdog::region_end(int64_t id) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if (it->id == id) {
      regions_.erase(it);
      return true;
    }
  }
  return false;
}

double Watchdog::timeout_s() const {
  if (cfg_.fixed_timeout_s > 0) return cfg_.fixed_timeout_s;
  uint64_t n = ndurations_.load(std::memory_order_acquire);
  if (n < static_cast<uint64_t>(std::max(cfg_.min_samples, 1))) return cfg_.initial_s;
  size_t k = static_cast<size_t>(std::min<uint64_t>(n, kWindow));
  uint64_t d[kWindow];
  for (size_t i = 0; i < k; ++i) d[i] = durations_[i].load(std::memory_order_relaxed);
  // Nearest-rank percentile: the smallest value with at least that share of samples at or
  // below it.
  constexpr size_t pct = limits::kHangPercentile;
  size_t rank = (pct * k + 99) / 100;
  std::nth_element(d, d + (rank - 1), d + k);
  double p95 = static_cast<double>(d[rank - 1]) / 1e9;
  return std::max(cfg_.floor_s, cfg_.multiple * p95);
}

double Watchdog::last_step_s() const {
  uint64_t n = ndurations_.load(std::memory_order_acquire);
  if (n == 0) return 0;
  return static_cast<double>(durations_[(n - 1) % kWindow].load(std::memory_order_relaxed)) / 1e9;
}

std::vector<HangReport> Watchdog::tick(uint64_t now_ns) {
  std::vector<HangReport> out;
  uint64_t seq = seq_.load(std::memory_order_acquire);
  bool armed = armed_.load(std::memory_order_relaxed);
  int64_t step = step_.load(std::memory_order_relaxed);
  uint64_t begin = begin_ns_.load(std::memory_order_relaxed);
  // A step began while we read: skip this tick, the next one sees it whole.
  if (seq_.load(std::memory_order_acquire) != seq || !armed) return out;
  double timeout = timeout_s();
  double elapsed = now_ns > begin ? static_cast<double>(now_ns - begin) / 1e9 : 0.0;
  if (elapsed > timeout && reported_seq_ != seq) {
    reported_seq_ = seq;
    HangReport r;
    r.step = step;
    r.elapsed_s = elapsed;
    r.timeout_s = timeout;
    out.push_back(r);
  }
  std::lock_guard<std::mutex> lock(regions_mu_);
  for (Region& g : regions_) {
    if (g.reported) continue;
    double limit = g.deadline_s > 0 ? g.deadline_s : timeout;
    double e = now_ns > g.begin_ns ? static_cast<double>(now_ns - g.begin_ns) / 1e9 : 0.0;
    if (e <= limit) continue;
    g.reported = true;
    HangReport r;
    r.is_region = true;
    r.step = step;
    r.elapsed_s = e;
    r.timeout_s = limit;
    r.region_id = g.id;
    r.region_kind = g.kind;
    r.region_name = g.name;
    out.push_back(r);
  }
  return out;
}

}  // namespace jitc
