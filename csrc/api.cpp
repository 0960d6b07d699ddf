// The exported C API (jitc.h) and the core entry points of core.h.
//
// Errors cross the ABI as jitc_status codes with a thread-local text (jitc_last_error);
// nothing here throws across the boundary. The hot-path calls (jitc_step_begin, jitc_mark,
// jitc_set_phase) only store atomics: the agent thread does every send.
#include <errno.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include "agent.h"
#include "channel.h"
#include "config.h"
#include "confine.h"
#include "core.h"
#include "jitc.h"
#include "json.h"
#include "signals.h"
#include "snapshot/engine.h"
#include "state.h"

namespace jitc {
namespace {

constexpr int kApiVersion = 100;
constexpr size_t kMaxDetail = 2048;   // user text in a FAILURE is cut to this

constexpr size_t kLastError = 512;
// On the heap, made by the thread's first error: the library's TLS block must stay small
// (see t_group in interpose/nccl_watch.cpp).
thread_local char* t_last_error = nullptr;
// Re-entry guard: report_failure -> local recovery -> snapshot -> an interposed call that
// fails -> report_failure must not recurse.
thread_local bool t_in_report = false;

std::mutex g_init_mu;

int fail(int status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int fail(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (t_last_error == nullptr) t_last_error = new (std::nothrow) char[kLastError];
  char scratch[kLastError];
  char* out = t_last_error != nullptr ? t_last_error : scratch;
  std::vsnprintf(out, kLastError, fmt, ap);
  va_end(ap);
  debug("%s", out);
  return status;
}

std::string cut(const char* s) {
  if (s == nullptr) return "";
  size_t n = strnlen(s, kMaxDetail);
  return std::string(s, n);
}

bool send_hello() {
  State& s = state();
  const Config& c = s.cfg;
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  char buf[1024];
  json::Writer w(buf, sizeof buf);
  w.ts()
      .i64("rank", c.rank)
      .i64("local_rank", c.local_rank)
      .i64("world_size", c.world_size)
      .i64("pid", s.init_pid)
      .i64("attempt", c.attempt)
      .str("host", host)
      .i64("shard", c.shard)
      .i64("num_shards", c.num_shards);
  return send_msg(channel::kHello, w);
}

void reset_runtime_state() {
  State& s = state();
  s.completed.store(0);
  s.phase.store(JITC_PHASE_IDLE);
  s.marks.store(0);
  s.stepping.store(false);
  s.goodbye_sent.store(false);
  s.release_received.store(false);
  s.orphaned.store(false);
  s.fatal_sent.store(false);
  s.recovering.store(false);
  s.suspect.store(false);
  s.term_pending_ns.store(0);
  std::lock_guard<std::mutex> lock(s.mu);
  s.window_open = false;
  s.window_flag.store(false);
  s.torn = false;
}

WatchdogConfig watchdog_config(const Config& c) {
  WatchdogConfig w;   // initial timeout and sample count: the rule's defaults
  w.fixed_timeout_s = c.hang_timeout_s;
  w.floor_s = c.hang_floor_s;
  w.multiple = c.hang_multiple;
  return w;
}

}  // namespace

bool auto_activate() {
  static std::atomic<bool> checked{false};
  if (active()) return true;
  if (checked.exchange(true)) return active();
  int rank, local_rank, world_size;
  if (!rank_from_env(&rank, &local_rank, &world_size) || !jitc_in_use_from_env()) return false;
  return jitc_init(rank, local_rank, world_size, 0, 1) == JITC_OK;
}

uint64_t now_ns() {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + static_cast<uint64_t>(t.tv_nsec);
}

double hang_timeout_s() {
  Watchdog* wd = state().watchdog.load();
  if (wd != nullptr) return wd->timeout_s();
  double fixed = load_config(0, 0, 1, 0, 1).hang_timeout_s;
  return fixed > 0 ? fixed : limits::kHangInitialS;
}

void add_poller(Poller p) {
  State& s = state();
  int i = s.npollers.fetch_add(1);
  if (i >= State::kMaxPollers) {
    s.npollers.fetch_sub(1);
    debug("poller table full (%d): poller dropped", State::kMaxPollers);
    return;
  }
  s.pollers[i].store(p);
}


void report_failure(FailureKind kind, Severity severity, const char* error, long code,
                    const char* detail) {
  State& s = state();
  if (!active() || t_in_report) return;
  t_in_report = true;
  const char* name = kind_name(kind);
  {
    std::lock_guard<std::mutex> lock(s.fail_mu);
    int64_t step = s.completed.load();
    if (s.fail_step != step) {
      s.fail_step = step;
      s.fail_keys.clear();
    }
    std::string key = std::string(name) + "/" + (error != nullptr ? error : "");
    for (const auto& k : s.fail_keys) {
      if (k == key) {
        t_in_report = false;
        return;
      }
    }
    s.fail_keys.push_back(key);
  }
  if (severity == Severity::Fatal && !kind_info(kind).trusted) s.suspect.store(true);
  if (s.fd.load() >= 0) {
    std::string d = cut(detail);
    char buf[4096];
    json::Writer w(buf, sizeof buf);
    failure_header(w, kind, severity);
    if (error != nullptr) w.str("error", error).i64("code", code);
    w.str("detail", d.c_str());
    if (!send_msg(channel::kFailure, w)) debug("FAILURE %s not sent", name);
  } else if (severity != Severity::Fatal) {
    debug("%s (%s): not fatal, carrying on", name, severity_name(severity));
  } else if (!s.orphaned.load() && kind_info(kind).trusted) {
    // Shim-only mode: a healthy rank (its collective failed or hung because of a peer)
    // writes its own snapshot and exits; never returns. A rank whose own code or device
    // failed holds suspect state and just fails as it would have.
    agent::local_recovery(name);
  }
  t_in_report = false;
}

}  // namespace jitc

using jitc::fail;
using jitc::State;
using jitc::state;

extern "C" {

JITC_API int jitc_api_version(void) { return jitc::kApiVersion; }

JITC_API const char* jitc_last_error(void) {
  return jitc::t_last_error != nullptr ? jitc::t_last_error : "";
}

JITC_API int jitc_init(int rank, int local_rank, int world_size, int shard, int num_shards) {
  if (rank < 0 || world_size < 1 || rank >= world_size || local_rank < 0)
    return fail(JITC_E_INVALID, "jitc_init: bad rank %d / local_rank %d / world_size %d", rank,
                local_rank, world_size);
  if (num_shards < 1 || shard < 0 || shard >= num_shards)
    return fail(JITC_E_INVALID, "jitc_init: bad shard %d of %d", shard, num_shards);
  std::lock_guard<std::mutex> lock(jitc::g_init_mu);
  State& s = state();
  if (jitc::hot::active.load()) {
    // Idempotent. Auto-activation by an interposer knows no shard: the later call from
    // protect() does, and the supervisor hears it in a second HELLO.
    if (s.cfg.shard != shard || s.cfg.num_shards != num_shards) {
      s.cfg.shard = shard;
      s.cfg.num_shards = num_shards;
      jitc::send_hello();
    }
    return JITC_OK;
  }
  jitc::Config cfg = jitc::load_config(rank, local_rank, world_size, shard, num_shards);
  if (!cfg.error.empty()) return fail(JITC_E_INVALID, "%s", cfg.error.c_str());
  s.cfg = cfg;
  s.init_pid = getpid();
  s.watchdog.store(new jitc::Watchdog(jitc::watchdog_config(s.cfg)));
  jitc::reset_runtime_state();
  if (!s.cfg.socket_path.empty()) {
    std::string why;
    int fd = jitc::channel::connect_to(s.cfg.socket_path, jitc::limits::kConnectTimeoutS, &why);
    if (fd < 0) return fail(JITC_E_CHANNEL, "jitc_init: %s", why.c_str());
    s.fd.store(fd);
    if (!jitc::send_hello()) {
      s.fd.store(-1);
      close(fd);
      return fail(JITC_E_CHANNEL, "jitc_init: HELLO not sent: %s", std::strerror(errno));
    }
  }
  jitc::hot::active.store(true);
  jitc::signals::install();
  std::string why;
  if (!jitc::agent::start(&why)) {
    jitc::signals::uninstall();
    jitc::hot::active.store(false);
    int fd = s.fd.exchange(-1);
    if (fd >= 0) close(fd);
    return fail(JITC_E_STATE, "jitc_init: %s", why.c_str());
  }
  jitc::debug("active: rank %d/%d, %s", rank, world_size,
              s.fd.load() >= 0 ? "supervised" : "shim-only");
  return JITC_OK;
}

JITC_API int jitc_shutdown(int clean) {
  std::lock_guard<std::mutex> lock(jitc::g_init_mu);
  State& s = state();
  if (!jitc::hot::active.load()) return JITC_OK;
  // Mark the clean end first (the _exit hook and the orphan check read it), stop the agent
  // so nothing follows the GOODBYE, then say goodbye.
  if (clean != 0) s.goodbye_sent.store(true);
  jitc::agent::stop(jitc::limits::kAgentJoinS);
  if (clean != 0 && s.fd.load() >= 0) {
    char buf[256];
    jitc::json::Writer w(buf, sizeof buf);
    w.ts().i64("rank", s.cfg.rank).i64("completed", s.completed.load());
    if (!jitc::send_msg(jitc::channel::kGoodbye, w)) jitc::debug("GOODBYE not sent");
  }
  jitc::signals::uninstall();
  jitc::hot::active.store(false);
  int fd = s.fd.exchange(-1);
  if (fd >= 0) close(fd);
  return JITC_OK;
}

JITC_API int jitc_supervised(void) {
  return jitc::active() && state().fd.load() >= 0 ? 1 : 0;
}

JITC_API int jitc_step_begin(int64_t step) {
  State& s = state();
  if (!jitc::active()) return fail(JITC_E_STATE, "jitc_step_begin: not initialised");
  if (step < 0) return fail(JITC_E_INVALID, "jitc_step_begin: negative step %lld",
                            static_cast<long long>(step));
  // `completed` first, then the window closes: a snapshot waiting for the window reads
  // `completed` as soon as it is let in, and the state is already `step`'s (I1).
  s.completed.store(step, std::memory_order_release);
  if (s.window_flag.load(std::memory_order_acquire)) jitc::window_close();
  s.marks.store(0, std::memory_order_relaxed);
  s.phase.store(JITC_PHASE_FORWARD, std::memory_order_relaxed);
  s.stepping.store(true, std::memory_order_relaxed);
  s.watchdog.load(std::memory_order_relaxed)->step_begin(step, jitc::now_ns());
  return JITC_OK;
}

JITC_API int jitc_steps_finished(int64_t completed) {
  State& s = state();
  if (!jitc::active()) return fail(JITC_E_STATE, "jitc_steps_finished: not initialised");
  if (completed < 0) return fail(JITC_E_INVALID, "jitc_steps_finished: negative count");
  s.completed.store(completed);   // before the window closes, as in jitc_step_begin
  if (s.window_flag.load(std::memory_order_acquire)) jitc::window_close();
  s.phase.store(JITC_PHASE_IDLE);
  s.stepping.store(false);
  s.watchdog.load()->steps_finished(jitc::now_ns());
  return JITC_OK;
}

JITC_API int jitc_set_phase(int phase) {
  if (phase < JITC_PHASE_IDLE || phase > JITC_PHASE_OPTIMIZER)
    return fail(JITC_E_INVALID, "jitc_set_phase: bad phase %d", phase);
  state().phase.store(phase, std::memory_order_relaxed);
  return JITC_OK;
}

JITC_API void jitc_mark(void) { state().marks.fetch_add(1, std::memory_order_relaxed); }

JITC_API int jitc_optimizer_begin(double timeout_s) {
  if (!jitc::active()) return fail(JITC_E_STATE, "jitc_optimizer_begin: not initialised");
  if (!jitc::window_enter(timeout_s))
    return fail(JITC_E_TIMEOUT, "jitc_optimizer_begin: a snapshot is still running after %.1f s",
                timeout_s);
  state().phase.store(JITC_PHASE_OPTIMIZER, std::memory_order_relaxed);
  return JITC_OK;
}

JITC_API int jitc_optimizer_end(void) {
  // The window stays open until the next step_begin: until then the registered state is
  // already the next step's while `completed` still names this one (I1).
  if (!state().window_flag.load()) return fail(JITC_E_STATE, "jitc_optimizer_end: no window open");
  return JITC_OK;
}

JITC_API int64_t jitc_region_begin(int kind, const char* name, double deadline_s) {
  if (!jitc::active()) return -fail(JITC_E_STATE, "jitc_region_begin: not initialised");
  if (kind < JITC_REGION_COLLECTIVE || kind > JITC_REGION_USER)
    return -fail(JITC_E_INVALID, "jitc_region_begin: bad kind %d", kind);
  return state().watchdog.load()->region_begin(kind, name, deadline_s, jitc::now_ns());
}

JITC_API int jitc_region_end(int64_t id) {
  jitc::Watchdog* wd = state().watchdog.load();
  if (wd == nullptr || !wd->region_end(id))
    return fail(JITC_E_INVALID, "jitc_region_end: no open region %lld", static_cast<long long>(id));
  return JITC_OK;
}

JITC_API int jitc_report_failure(const char* kind, const char* detail) {
  if (kind == nullptr || kind[0] == '\0') return fail(JITC_E_INVALID, "jitc_report_failure: no kind");
  jitc::FailureKind k;
  if (!jitc::kind_from_name(kind, &k))
    return fail(JITC_E_INVALID, "jitc_report_failure: unknown kind %s", kind);
  if (!jitc::active()) return fail(JITC_E_STATE, "jitc_report_failure: not initialised");
  jitc::report_failure(k, jitc::default_severity(k), nullptr, 0, detail);
  return JITC_OK;
}

JITC_API int jitc_report_fault_injected(const char* kind, int64_t step, int phase) {
  if (kind == nullptr) return fail(JITC_E_INVALID, "jitc_report_fault_injected: no kind");
  State& s = state();
  if (!jitc::active()) return fail(JITC_E_STATE, "jitc_report_fault_injected: not initialised");
  if (s.fd.load() < 0) return JITC_OK;  // shim-only: nobody to tell
  std::string k = jitc::cut(kind);
  char buf[512];
  jitc::json::Writer w(buf, sizeof buf);
  w.ts().i64("rank", s.cfg.rank).str("kind", k.c_str()).i64("step", step).str("phase", jitc::phase_name(phase));
  if (!jitc::send_msg(jitc::channel::kFaultInjected, w))
    return fail(JITC_E_IO, "FAULT_INJECTED not sent");
  return JITC_OK;
}

JITC_API int jitc_report_resumed(int64_t step, const char* manifest) {
  State& s = state();
  if (!jitc::active()) return fail(JITC_E_STATE, "jitc_report_resumed: not initialised");
  if (s.fd.load() < 0) return JITC_OK;
  std::string m = jitc::cut(manifest);
  char buf[4096];
  jitc::json::Writer w(buf, sizeof buf);
  w.ts().i64("rank", s.cfg.rank).i64("step", step).str("manifest", m.c_str());
  if (!jitc::send_msg(jitc::channel::kResumed, w)) return fail(JITC_E_IO, "RESUMED not sent");
  return JITC_OK;
}

JITC_API int jitc_wait_command(double timeout_s) {
  State& s = state();
  // Without a supervisor nobody will ever send RELEASE: do not make the caller wait.
  if (!jitc_supervised() && !s.release_received.load()) return JITC_CMD_NONE;
  if (timeout_s < 0) timeout_s = 0;
  std::unique_lock<std::mutex> lock(s.mu);
  bool got = s.cv.wait_for(lock, std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)),
                           [&] { return s.release_received.load(); });
  return got ? JITC_CMD_RELEASE : JITC_CMD_NONE;
}

JITC_API int jitc_registry_begin(void) {
  jitc::snapshot::registry_begin();
  return JITC_OK;
}

JITC_API int jitc_registry_add(const char* name, const void* ptr, uint64_t nbytes,
                               const char* dtype, const int64_t* shape, int ndim, int device) {
  if (name == nullptr || dtype == nullptr || ndim < 0 || (ndim > 0 && shape == nullptr) ||
      (ptr == nullptr && nbytes > 0) || device < -1)
    return fail(JITC_E_INVALID, "jitc_registry_add: bad argument");
  jitc::snapshot::Entry e;
  e.name = name;
  e.ptr = ptr;
  e.nbytes = nbytes;
  e.dtype = dtype;
  e.shape.assign(shape, shape + ndim);
  e.device = device;
  std::string why;
  try {
    if (!jitc::snapshot::registry_add(std::move(e), &why))
      return fail(JITC_E_INVALID, "jitc_registry_add(%s): %s", name, why.c_str());
  } catch (const std::bad_alloc&) {
    return fail(JITC_E_NOMEM, "jitc_registry_add: out of memory");
  }
  return JITC_OK;
}

JITC_API int jitc_registry_commit(void) {
  jitc::snapshot::registry_commit();
  return JITC_OK;
}

JITC_API int jitc_set_meta(const void* data, size_t nbytes) {
  if (data == nullptr && nbytes > 0) return fail(JITC_E_INVALID, "jitc_set_meta: null data");
  try {
    jitc::snapshot::set_meta(data, nbytes);
  } catch (const std::bad_alloc&) {
    return fail(JITC_E_NOMEM, "jitc_set_meta: out of memory");
  }
  return JITC_OK;
}

JITC_API int jitc_snapshot_write(const char* dir, int nstripes, const int* stripes,
                                 const char* const* stems, int nlist, double timeout_s,
                                 int64_t* step_out) {
  if (dir == nullptr || dir[0] == '\0' || nstripes < 1 || nlist < 1 || stripes == nullptr ||
      stems == nullptr)
    return fail(JITC_E_INVALID, "jitc_snapshot_write: bad argument");
  std::vector<int> list(stripes, stripes + nlist);
  for (int j : list)
    if (j < 0 || j >= nstripes) return fail(JITC_E_INVALID, "jitc_snapshot_write: stripe %d of %d", j, nstripes);
  std::vector<std::string> names;
  for (int i = 0; i < nlist; ++i) {
    if (stems[i] == nullptr || !jitc::snapshot::plain_name(stems[i]))
      return fail(JITC_E_INVALID, "jitc_snapshot_write: stem %d is not a plain file name", i);
    names.emplace_back(stems[i]);
  }
  std::string why;
  if (!jitc::agent::make_dirs(dir, &why)) return fail(JITC_E_IO, "jitc_snapshot_write: %s", why.c_str());
  if (!jitc::snapshot_enter(timeout_s, &why)) {
    int status = why.rfind("optimizer", 0) == 0 ? JITC_E_STATE : JITC_E_BUSY;
    return fail(status, "jitc_snapshot_write: %s", why.c_str());
  }
  int64_t step = state().completed.load();
  std::vector<jitc::snapshot::StripeResult> results;
  try {
    results = jitc::snapshot::write_stripes(dir, nstripes, list, names, step, timeout_s);
  } catch (const std::exception& e) {
    jitc::snapshot_exit();
    return fail(JITC_E_IO, "jitc_snapshot_write: %s", e.what());
  }
  jitc::snapshot_exit();
  if (step_out != nullptr) *step_out = step;
  if (results.size() != list.size()) return fail(JITC_E_IO, "jitc_snapshot_write: stripes missing");
  for (const auto& r : results)
    if (!r.ok) return fail(JITC_E_IO, "jitc_snapshot_write: stripe %d: %s", r.stripe, r.error.c_str());
  return JITC_OK;
}

JITC_API int jitc_write_tensors(const char* root, const char* dir, const char* stem,
                                int64_t step, const jitc_tensor* tensors, int n,
                                const void* meta, size_t meta_len, double timeout_s) {
  if (root == nullptr || dir == nullptr || stem == nullptr || !jitc::snapshot::plain_name(stem) ||
      n < 0 || (n > 0 && tensors == nullptr) || (meta == nullptr && meta_len > 0) || step < 0 ||
      !(timeout_s > 0))
    return fail(JITC_E_INVALID, "jitc_write_tensors: bad argument");
  try {
    std::vector<jitc::snapshot::Entry> entries(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      const jitc_tensor& t = tensors[i];
      if (t.name == nullptr || t.dtype == nullptr || t.ndim < 0 ||
          (t.ndim > 0 && t.shape == nullptr))
        return fail(JITC_E_INVALID, "jitc_write_tensors: bad tensor %d", i);
      jitc::snapshot::Entry& e = entries[static_cast<size_t>(i)];
      e.name = t.name;
      e.dtype = t.dtype;
      e.shape.assign(t.shape, t.shape + t.ndim);
      e.ptr = t.data;
      e.nbytes = t.nbytes;
    }
    std::string target, why;
    // Checked before the directory is made: a refused call leaves nothing behind.
    if (!jitc::snapshot::check_tensors(entries, &why))
      return fail(JITC_E_INVALID, "jitc_write_tensors: %s", why.c_str());
    if (!jitc::confine::dir_below(root, dir, &target, &why))
      return fail(JITC_E_INVALID, "jitc_write_tensors: %s", why.c_str());
    std::string blob(static_cast<const char*>(meta), meta_len);
    if (!jitc::snapshot::write_tensors(target, stem, std::move(entries), std::move(blob), step,
                                       timeout_s, &why))
      return fail(JITC_E_IO, "jitc_write_tensors: %s", why.c_str());
  } catch (const std::bad_alloc&) {
    return fail(JITC_E_NOMEM, "jitc_write_tensors: out of memory");
  }
  return JITC_OK;
}

// jitc_crc32c is implemented beside the checksum itself, in csrc/snapshot/crc32c.cpp.

JITC_API int jitc_limits(char* buf, size_t n) {
  // The limits this process obeys (active) or would obey (the environment now), so that a
  // test can hold them against jitc/limits.py. The caller's buffer: no thread_local here,
  // the library's static TLS must stay small enough to be dlopened after torch.
  if (buf == nullptr || n == 0) return fail(JITC_E_INVALID, "jitc_limits: no buffer");
  State& s = state();
  jitc::Config c = jitc::active() ? s.cfg : jitc::load_config(0, 0, 1, 0, 1);
  jitc::json::Writer w(buf, n - 1);   // room for the terminating NUL
  namespace L = jitc::limits;
  w.num("hang_timeout", c.hang_timeout_s)
      .num("hang_floor", c.hang_floor_s)
      .num("hang_multiple", c.hang_multiple)
      .num("hang_initial", L::kHangInitialS)
      .i64("hang_percentile", L::kHangPercentile)
      .i64("hang_window", L::kHangWindow)
      .i64("hang_min_samples", L::kHangMinSamples)
      .num("heartbeat", L::kProgressMinIntervalS)
      .num("grace", c.grace_s)
      .num("sigterm_hold", c.sigterm_hold_s)
      .num("snapshot_timeout", c.snapshot_timeout_s)
      .num("snapshot_join_grace", L::kSnapshotJoinGraceS)
      .i64("attempt", c.attempt)
      .str("error", c.error.c_str());
  size_t len = w.finish();
  if (len == 0) return fail(JITC_E_INVALID, "jitc_limits: buffer of %zu bytes too small", n);
  buf[len] = '\0';
  return JITC_OK;
}

JITC_API const char* jitc_failure_table(void) {
  // The failure table as compiled in (jitc/failure_kinds.def through csrc/failure.h).
  static const std::string table = [] {
    std::string t = "{\"kinds\":[";
    for (size_t i = 0; i < jitc::kNumKinds; ++i) {
      const jitc::KindInfo& k = jitc::failure_table::kKinds[i];
      const char* blame = k.blame == jitc::Blame::Self ? "self"
                          : k.blame == jitc::Blame::Progress ? "progress" : "never";
      t += std::string(i ? "," : "") + "{\"name\":\"" + k.name + "\",\"trusted\":" +
           (k.trusted ? "true" : "false") + ",\"hang\":" + (k.hang ? "true" : "false") +
           ",\"by_code\":" + (k.by_code ? "true" : "false") + ",\"blame\":\"" + blame + "\"}";
    }
    t += "],\"severities\":[";
    for (size_t i = 0; i < jitc::kNumSeverities; ++i)
      t += std::string(i ? "," : "") + "\"" + jitc::failure_table::kSeverities[i] + "\"";
    return t + "]}";
  }();
  return table.c_str();
}

JITC_API void jitc_fault_segv(void) {
  // A volatile pointer the compiler cannot prove null: a real store to address 0, hence a
  // real SIGSEGV (a literal null dereference may be compiled into a trap, i.e. SIGILL).
  static int* volatile target = nullptr;
  *target = 42;
}

JITC_API int jitc_fault_arm(const char* kind) {
  if (kind == nullptr) return fail(JITC_E_INVALID, "jitc_fault_arm: no kind");
  jitc::Fault f;
  if (std::strcmp(kind, "cuda-error") == 0) f = jitc::Fault::CudaError;
  else if (std::strcmp(kind, "nccl-error") == 0) f = jitc::Fault::NcclError;
  else if (std::strcmp(kind, "nccl-hang") == 0) f = jitc::Fault::NcclHang;
  else return fail(JITC_E_INVALID, "jitc_fault_arm: unknown kind %s", kind);
  jitc::hot::armed_faults.fetch_or(1u << static_cast<int>(f));
  return JITC_OK;
}

}  // extern "C"
