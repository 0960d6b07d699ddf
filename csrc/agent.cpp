// The agent thread's loop and its steps. See agent.h.
//
// The loop only polls and dispatches; each concern is one function run once per tick
// (STYLE.md: separate the loop from its step).
#include "agent.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "channel.h"
#include "confine.h"
#include "config.h"
#include "json.h"
#include "signals.h"
#include "snapshot/engine.h"
#include "snapshot/internal.h"
#include "state.h"

namespace jitc::agent {
namespace {

std::atomic<bool> g_stop{false};

// The agent thread's lifetime. Never destroyed, like State: a process that exits without
// jitc_shutdown (an uncaught Python exception, sys.exit in user code) runs static
// destructors while the thread still runs, and a destroyed joinable std::thread calls
// std::terminate, turning the user's exit code into SIGABRT.
struct Life {
  std::mutex mu;
  std::condition_variable cv;
  bool running = false;
  std::thread thread;
};

Life& life() {
  static Life* l = new Life();
  return *l;
}

struct Loop {
  std::vector<char> buf = std::vector<char>(channel::kHeaderSize + channel::kMaxPayload + 64);
  uint64_t last_progress_ns = 0;
  int64_t sent_completed = -1;
  int sent_phase = -1;
  bool snapshot_since_term = false;   // a SNAPSHOT ran while a SIGTERM was held
  uint64_t orphan_since_ns = 0;
};

void send_snapshot_done(const std::string& id, int stripe, int nstripes, int64_t step,
                        const snapshot::StripeResult* r, const std::string& error,
                        const std::string& fingerprint) {
  std::vector<char> buf(16 * 1024);
  json::Writer w(buf.data(), buf.size());
  w.ts()
      .str("id", id.c_str())
      .i64("rank", state().cfg.rank)
      .i64("stripe", stripe)
      .i64("nstripes", nstripes)
      .boolean("ok", r != nullptr && r->ok)
      .i64("step", step)
      .str("file", r != nullptr ? r->file.c_str() : "")
      .i64("bytes", r != nullptr ? static_cast<int64_t>(r->bytes) : 0)
      .i64("crc32c", r != nullptr ? static_cast<int64_t>(r->crc32c) : 0)
      .str("fingerprint", fingerprint.c_str())
      .str("error", r != nullptr && !r->ok ? r->error.c_str() : error.c_str());
  if (!send_msg(channel::kSnapshotDone, w)) debug("SNAPSHOT_DONE for stripe %d not sent", stripe);
}

// The SNAPSHOT command, checked field by field: a malformed one is answered with ok=false
// for what can be named of it, and writes nothing.
struct SnapshotCommand {
  std::string id;
  std::string dir;
  std::vector<int> stripes;
  std::vector<std::string> files;   // the file stem of each stripe, parallel to stripes
  int nstripes = 0;
  bool has_step = false;
  int64_t step = 0;
  double timeout_s = state().cfg.snapshot_timeout_s;   // JITC_SNAPSHOT_TIMEOUT, from the supervisor
};

// More stripes than this in one snapshot is not a plan, it is a malformed command.
constexpr int64_t kMaxStripes = 1 << 16;
constexpr size_t kMaxIdBytes = 256;
constexpr double kMaxCommandTimeoutS = 24 * 3600.0;   // a bound, not a plan

// The caller names each stripe's file (jitc/snapshot/layout.py); the agent only checks that
// each is a plain file name, so a command cannot aim a file outside its directory.
void parse_files(const json::Value* files, size_t n, std::vector<std::string>* out,
                 std::string* why) {
  if (files == nullptr || files->type != json::Value::Type::Array || files->arr.size() != n) {
    *why = "malformed SNAPSHOT command: files (one file stem per stripe)";
    return;
  }
  for (const json::Value& f : files->arr) {
    if (!f.is_string() || !snapshot::plain_name(f.s)) {
      *why = "malformed SNAPSHOT command: files: not a plain file name (no '/', no '..', "
             "1.." + std::to_string(snapshot::kMaxStemBytes) + " bytes)";
      return;
    }
    for (const std::string& seen : *out)
      if (seen == f.s) {
        *why = "malformed SNAPSHOT command: files: a stem given twice";
        return;
      }
    out->push_back(f.s);
  }
}

bool parse_snapshot(const json::Value& body, SnapshotCommand* c, std::string* why) {
  const json::Value* id = body.get("id");
  if (id != nullptr && id->is_string() && id->s.size() <= kMaxIdBytes) c->id = id->s;
  const json::Value* dir = body.get("dir");
  const json::Value* stripes = body.get("stripes");
  const json::Value* files = body.get("files");
  const json::Value* step = body.get("step");
  const json::Value* timeout = body.get("timeout");
  int64_t k = 0, v = 0;
  if (id == nullptr || !id->is_string() || id->s.size() > kMaxIdBytes) {
    *why = "malformed SNAPSHOT command: id";
  } else if (dir == nullptr || !dir->is_string() || dir->s.empty()) {
    *why = "malformed SNAPSHOT command: dir";
  } else if (body.get("nstripes") == nullptr || !body.get("nstripes")->as_int(1, kMaxStripes, &k)) {
    *why = "malformed SNAPSHOT command: nstripes";
  } else if (stripes == nullptr || stripes->type != json::Value::Type::Array ||
             stripes->arr.empty() || stripes->arr.size() > static_cast<size_t>(k)) {
    *why = "malformed SNAPSHOT command: stripes";
  } else if (step != nullptr && step->type != json::Value::Type::Null && !step->as_int(INT64_MIN, INT64_MAX, &v)) {
    *why = "malformed SNAPSHOT command: step";
  } else if (timeout != nullptr && timeout->type != json::Value::Type::Null &&
             !(timeout->is_number() && timeout->num > 0 && timeout->num <= kMaxCommandTimeoutS)) {
    *why = "malformed SNAPSHOT command: timeout";
  }
  c->nstripes = static_cast<int>(k);
  if (stripes != nullptr && stripes->type == json::Value::Type::Array) {
    std::vector<bool> seen(static_cast<size_t>(k), false);
    for (const json::Value& x : stripes->arr) {
      int64_t j = -1;
      bool good = x.as_int(0, k - 1, &j) && !seen[static_cast<size_t>(j)];   // once each
      if (good) seen[static_cast<size_t>(j)] = true;
      if (!good && why->empty()) *why = "malformed SNAPSHOT command: stripes";
      if (c->stripes.size() < static_cast<size_t>(kMaxStripes)) c->stripes.push_back(good ? static_cast<int>(j) : -1);
    }
  }
  if (why->empty()) parse_files(files, c->stripes.size(), &c->files, why);
  if (!why->empty()) return false;
  c->dir = dir->s;
  if (step != nullptr && step->type != json::Value::Type::Null) {
    c->has_step = true;
    c->step = v;
  }
  if (timeout != nullptr && timeout->is_number()) c->timeout_s = timeout->num;
  return true;
}

void on_snapshot(Loop& loop, const json::Value& body) {
  State& s = state();
  SnapshotCommand cmd;
  std::string why;
  std::string fp = snapshot::fingerprint();
  if (!parse_snapshot(body, &cmd, &why)) {
    debug("%s", why.c_str());
    // One answer (not one per listed stripe: the list itself may be the garbage).
    send_snapshot_done(cmd.id, cmd.stripes.empty() ? -1 : cmd.stripes[0], cmd.nstripes,
                       s.completed.load(), nullptr, why, fp);
    return;
  }
  const std::vector<int>& list = cmd.stripes;
  const int k = cmd.nstripes;
  const std::string& sid = cmd.id;
  std::vector<snapshot::StripeResult> results;
  int64_t at = s.completed.load();
  std::string target;
  if (snapshot_enter(limits::kSnapshotWindowWaitS, &why)) {
    at = s.completed.load();
    if (cmd.has_step && cmd.step != at) {
      why = "step mismatch: rank has completed " + std::to_string(at) + ", asked for " +
            std::to_string(cmd.step);
    } else if (!confine::snapshot_dir(cmd.dir, &target, &why)) {
      debug("SNAPSHOT refused: %s", why.c_str());
    } else {
      debug("snapshot %s: %zu stripe(s) of %d at step %lld", sid.c_str(), list.size(), k,
            static_cast<long long>(at));
      results = snapshot::write_stripes(target, k, list, cmd.files, at, cmd.timeout_s);
    }
    snapshot_exit();
  }
  for (int j : list) {
    const snapshot::StripeResult* r = nullptr;
    for (const auto& x : results)
      if (x.stripe == j) r = &x;
    send_snapshot_done(sid, j, k, at, r, r == nullptr && why.empty() ? "stripe not written" : why, fp);
  }
  if (s.term_pending_ns.load() != 0) loop.snapshot_since_term = true;
}

void send_state() {
  State& s = state();
  uint64_t nbytes = snapshot::registered_bytes();
  bool window_open;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    window_open = s.window_open;
  }
  bool usable = window_healthy(now_ns()) && nbytes > 0;
  std::string fp = snapshot::fingerprint();
  char buf[1024];
  json::Writer w(buf, sizeof buf);
  w.ts()
      .i64("rank", s.cfg.rank)
      .i64("completed", s.completed.load())
      .boolean("window_open", window_open)
      .boolean("usable", usable)
      .str("fingerprint", fp.c_str())
      .i64("nbytes", static_cast<int64_t>(nbytes))
      .i64("shard", s.cfg.shard);
  send_msg(channel::kState, w);
}

void on_message(Loop& loop, uint8_t type, const char* payload, size_t n) {
  State& s = state();
  json::Value body;
  std::string why;
  if (!json::parse(payload, n, &body, &why) || body.type != json::Value::Type::Object) {
    debug("dropping message type %u: %s", type, why.empty() ? "not an object" : why.c_str());
    return;
  }
  switch (type) {
    case channel::kQuery:
      send_state();
      break;
    case channel::kSnapshot:
      on_snapshot(loop, body);
      break;
    case channel::kRelease: {
      {
        std::lock_guard<std::mutex> lock(s.mu);
        s.release_received.store(true);
      }
      s.cv.notify_all();
      break;
    }
    default:
      debug("ignoring message type %u", type);
  }
}

void close_channel() {
  int fd = state().fd.exchange(-1);
  if (fd >= 0) close(fd);
}

// The supervisor is gone. A rank must not outlive it: SIGTERM now (the handler lets it
// through, there is nobody left to wait for), SIGKILL after a grace if it is still here.
void on_supervisor_gone(Loop& loop) {
  State& s = state();
  close_channel();
  s.orphaned.store(true);
  if (s.goodbye_sent.load()) return;  // a clean end that raced with the supervisor
  debug("supervisor connection closed: terminating this rank");
  loop.orphan_since_ns = now_ns();
  kill(getpid(), SIGTERM);
}

void drain_channel(Loop& loop) {
  for (;;) {
    int fd = state().fd.load();
    if (fd < 0) return;
    uint8_t type = 0;
    const char* payload = nullptr;
    size_t n = 0;
    switch (channel::recv(fd, loop.buf.data(), loop.buf.size(), &type, &payload, &n)) {
      case channel::Recv::kMessage:
        on_message(loop, type, payload, n);
        break;
      case channel::Recv::kDropped:
        debug("dropped a malformed record");
        break;
      case channel::Recv::kBadVersion:
        debug("supervisor speaks another protocol version: closing the channel");
        close_channel();
        return;
      case channel::Recv::kEof:
      case channel::Recv::kError:
        on_supervisor_gone(loop);
        return;
      case channel::Recv::kAgain:
        return;
    }
  }
}

void send_hang(const HangReport& r) {
  State& s = state();
  int64_t completed = s.completed.load();
  int phase = s.phase.load();
  char progress[96];
  size_t n = 0;
  progress[n++] = '[';
  n += json::format_i64(progress + n, 30, completed);
  progress[n++] = ',';
  n += json::format_i64(progress + n, 30, phase);
  progress[n++] = ',';
  n += json::format_i64(progress + n, 30, static_cast<int64_t>(s.marks.load()));
  progress[n++] = ']';
  progress[n] = '\0';
  char buf[2048];
  json::Writer w(buf, sizeof buf);
  failure_header(w, FailureKind::Hang);
  w.raw("progress", progress).num("elapsed", r.elapsed_s).num("timeout", r.timeout_s);
  if (r.is_region) {
    std::string name = r.region_name.substr(0, 256);
    w.str("region", name.c_str()).i64("region_kind", r.region_kind);
    w.str("detail", "marked region exceeded its deadline");
  } else {
    w.str("detail", "step exceeded the hang timeout");
  }
  send_msg(channel::kFailure, w);
}

void tick_watchdog(uint64_t now) {
  State& s = state();
  Watchdog* wd = s.watchdog.load();
  if (wd == nullptr) return;
  for (const HangReport& r : wd->tick(now)) {
    debug("hang: step %lld, %.1f s > %.1f s%s%s", static_cast<long long>(r.step), r.elapsed_s,
          r.timeout_s, r.is_region ? " in region " : "", r.region_name.c_str());
    if (s.fd.load() >= 0) send_hang(r);
    else if (!s.orphaned.load()) local_recovery("hang");
  }
}

void send_progress(Loop& loop, uint64_t now) {
  State& s = state();
  if (s.fd.load() < 0) return;
  int64_t completed = s.completed.load();
  int phase = s.phase.load();
  if (completed == loop.sent_completed && phase == loop.sent_phase) return;
  if (now - loop.last_progress_ns < static_cast<uint64_t>(limits::kProgressMinIntervalS * 1e9)) return;
  Watchdog* wd = s.watchdog.load();
  char buf[512];
  json::Writer w(buf, sizeof buf);
  w.ts()
      .i64("rank", s.cfg.rank)
      .i64("step", completed)
      .i64("completed", completed)
      .str("phase", phase_name(phase))
      .num("step_time", wd != nullptr ? wd->last_step_s() : 0.0)
      .num("hang_timeout", wd != nullptr ? wd->timeout_s() : 0.0)
      .i64("marks", static_cast<int64_t>(s.marks.load()));
  if (send_msg(channel::kProgress, w)) {
    loop.sent_completed = completed;
    loop.sent_phase = phase;
    loop.last_progress_ns = now;
  }
}

void run_pollers(uint64_t now) {
  State& s = state();
  int n = std::min(s.npollers.load(), State::kMaxPollers);
  for (int i = 0; i < n; ++i) {
    Poller p = s.pollers[i].load();
    if (p != nullptr) p(now);
  }
}

// Shim-only: may a SIGTERM (torchrun stopping the group because a peer failed) be answered
// with this rank's snapshot? It is not the rank's own failure, so its state is trusted
// unless it reported a failure of a SUSPECT kind (failure_kinds.def); and only while
// training runs, with something registered and somewhere to write it.
bool write_on_term() {
  State& s = state();
  return s.cfg.socket_path.empty() && !s.cfg.dir.empty() && s.stepping.load() &&
         !s.suspect.load() && snapshot::registered_bytes() > 0;
}

void write_local(const char* reason, uint64_t deadline_ns);

// A held SIGTERM is due when no snapshot is running (or it has run past the bound) and,
// supervised, the supervisor had its chance: RELEASE came, a SNAPSHOT ran, or the wait for
// one ran out. Shim-only, a trusted rank first writes its own snapshot (within the hold)
// and exits as local_recovery does.
void check_sigterm(Loop& loop, uint64_t now) {
  State& s = state();
  uint64_t since = s.term_pending_ns.load();
  if (since == 0) return;
  double held = now > since ? static_cast<double>(now - since) / 1e9 : 0.0;
  bool due;
  if (s.snapshot_running.load() || s.recovering.load()) {
    // Another thread's local recovery exits the process itself; only the bound is ours.
    due = held > s.cfg.sigterm_hold_s;
  } else if (s.cfg.socket_path.empty()) {
    if (write_on_term() && !s.recovering.exchange(true)) {
      write_local("SIGTERM from the launcher",
                  since + static_cast<uint64_t>(s.cfg.sigterm_hold_s * 1e9));
      _exit(limits::kLocalRecoveryExitCode);
    }
    due = true;
  } else {
    bool supervised = s.fd.load() >= 0 && !s.orphaned.load();
    bool waiting = supervised && !s.release_received.load() && !loop.snapshot_since_term;
    due = !waiting || held > s.cfg.sigterm_hold_s;
  }
  if (!due) return;
  s.term_pending_ns.store(0);
  loop.snapshot_since_term = false;
  signals::release_sigterm();
}

void check_orphan(Loop& loop, uint64_t now) {
  if (loop.orphan_since_ns == 0) return;
  if (now - loop.orphan_since_ns > static_cast<uint64_t>(limits::kOrphanGraceS * 1e9)) {
    debug("still alive %.0f s after the supervisor went away: SIGKILL", limits::kOrphanGraceS);
    kill(getpid(), SIGKILL);
  }
}

void run() {
  Loop loop;
  State& s = state();
  while (!g_stop.load()) {
    struct pollfd fds[2];
    int nfds = 0;
    fds[nfds++] = {s.wake_fd.load(), POLLIN, 0};
    int cfd = s.fd.load();
    if (cfd >= 0) fds[nfds++] = {cfd, POLLIN, 0};
    int r = poll(fds, nfds, limits::kTickMs);
    if (r > 0 && (fds[0].revents & POLLIN) != 0) {
      uint64_t v;
      ssize_t ignored = read(fds[0].fd, &v, sizeof v);
      (void)ignored;
    }
    if (g_stop.load()) break;
    if (r > 0 && nfds > 1 && fds[1].revents != 0) drain_channel(loop);
    uint64_t now = now_ns();
    tick_watchdog(now);
    send_progress(loop, now);
    run_pollers(now);
    check_sigterm(loop, now);
    check_orphan(loop, now);
  }
}

void thread_main() {
  run();
  {
    std::lock_guard<std::mutex> lock(life().mu);
    life().running = false;
  }
  life().cv.notify_all();
}

}  // namespace

bool make_dirs(const std::string& path, std::string* why) {
  std::string cur;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    cur = path.substr(0, next);
    if (!cur.empty() && mkdir(cur.c_str(), 0700) != 0 && errno != EEXIST) {
      *why = snapshot::os_error("mkdir", cur, errno);   // "mkdir PATH: ENOSPC (...)"
      return false;
    }
    pos = next + 1;
  }
  return true;
}

bool start(std::string* why) {
  State& s = state();
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    *why = std::string("eventfd: ") + std::strerror(errno);
    return false;
  }
  s.wake_fd.store(efd);
  confine::set_root(s.cfg.dir);   // the only place SNAPSHOT commands may write
  g_stop.store(false);
  {
    std::lock_guard<std::mutex> lock(life().mu);
    life().running = true;
  }
  // The thread inherits the caller's signal mask (Python's main thread blocks nothing),
  // so a process-directed SIGTERM may land here: the handler is async-signal-safe.
  try {
    life().thread = std::thread(thread_main);
  } catch (const std::exception& e) {
    *why = std::string("agent thread: ") + e.what();
    std::lock_guard<std::mutex> lock(life().mu);
    life().running = false;
    return false;
  }
  return true;
}

void stop(double timeout_s) {
  State& s = state();
  Life& l = life();
  if (!l.thread.joinable()) return;
  g_stop.store(true);
  wake_agent();
  std::unique_lock<std::mutex> lock(l.mu);
  bool done = l.cv.wait_for(lock, std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)),
                            [&l] { return !l.running; });
  lock.unlock();
  if (done) {
    l.thread.join();
  } else {
    debug("agent thread did not stop within %.1f s: detached", timeout_s);
    l.thread.detach();
  }
  int efd = s.wake_fd.exchange(-1);
  if (efd >= 0 && done) close(efd);
}

namespace {

double seconds_until(uint64_t deadline_ns) {
  uint64_t now = now_ns();
  return deadline_ns > now ? static_cast<double>(deadline_ns - now) / 1e9 : 0.0;
}

// The one name the shim spells itself: shim-only, an interposer may activate it with no
// Python to ask. layout.stripe_stem(0, 1); tests/shim/test_sigterm_shim_only.py holds the two
// against each other.
constexpr const char* kLocalStem = "stripe-0-of-1";

// Writes stripe 0 of 1 of the registered state into this rank's own snapshot directory and
// says what happened on stderr (shim-only mode has no supervisor to log it): the snapshot
// written (local rank 0; every rank writes one), or why not (every rank). deadline_ns 0:
// the usual bounds (window wait, JITC_SNAPSHOT_TIMEOUT); else everything ends by then: the
// window wait takes at most half of what is left past the writer's join grace.
void write_local(const char* reason, uint64_t deadline_ns) {
  State& s = state();
  const Config& c = s.cfg;
  int64_t step = s.completed.load();
  debug("local recovery (%s) at step %lld", reason, static_cast<long long>(step));
  if (c.dir.empty()) {
    debug("JITC_DIR not set: no snapshot written");
    return;
  }
  if (snapshot::registered_bytes() == 0) {
    debug("nothing registered: no snapshot written");
    return;
  }
  const uint64_t t0 = now_ns();
  double wait_s = limits::kSnapshotWindowWaitS, write_s = c.snapshot_timeout_s;
  if (deadline_ns != 0) {
    double left = seconds_until(deadline_ns) - limits::kSnapshotJoinGraceS;
    wait_s = std::min(wait_s, left / 2);
  }
  std::string why, dir;
  bool ok = false;
  if (wait_s > 0 && snapshot_enter(wait_s, &why)) {
    step = s.completed.load();  // stable now: the window is closed
    if (deadline_ns != 0)
      write_s = std::min(write_s, seconds_until(deadline_ns) - limits::kSnapshotJoinGraceS);
    dir = c.dir + "/snap-a" + std::to_string(c.attempt) + "-s" + std::to_string(step) + "-" +
          std::to_string(c.rank);
    if (write_s <= 0) {
      why = "no time left before the SIGTERM is due";
    } else if (make_dirs(dir, &why)) {
      for (const auto& r : snapshot::write_stripes(dir, 1, {0}, {kLocalStem}, step, write_s)) {
        debug("local snapshot stripe %d: %s %s", r.stripe, r.ok ? "ok" : "FAILED",
              r.ok ? r.file.c_str() : r.error.c_str());
        ok = r.ok;
        if (!r.ok) why = r.error;
      }
    }
    snapshot_exit();
  } else if (why.empty()) {
    why = "no time left before the SIGTERM is due";
  }
  double took = static_cast<double>(now_ns() - t0) / 1e9;
  if (ok && c.local_rank == 0)
    notice("rank %d (%s): snapshot of step %lld written to %s in %.2f s", c.rank, reason,
           static_cast<long long>(step), dir.c_str(), took);
  else if (!ok)
    notice("rank %d (%s): snapshot of step %lld not written: %s", c.rank, reason,
           static_cast<long long>(step), why.c_str());
}

}  // namespace

void local_recovery(const char* reason) {
  State& s = state();
  if (s.recovering.exchange(true)) {
    // Another thread is writing and will exit the process; wait for it, bounded.
    std::this_thread::sleep_for(std::chrono::duration<double>(s.cfg.snapshot_timeout_s +
                                                              limits::kSnapshotWindowWaitS));
    _exit(limits::kLocalRecoveryExitCode);
  }
  write_local(reason, 0);
  _exit(limits::kLocalRecoveryExitCode);
}

}  // namespace jitc::agent
