// The GIL-free stripe writer: registered state -> "<dir>/<stem>.safetensors", the stem of
// each stripe told by the caller (jitc/snapshot/layout.py names files; this never does).
//
// Runs on the agent thread (supervisor SNAPSHOT) or the caller's thread (jitc_snapshot_write)
// and never touches Python (invariant I5). Each stripe is written by its own thread (up to
// kMaxThreads) in large writes straight from the tensors' memory (CPU) or through a pinned
// staging buffer filled on the shim's own stream (CUDA); the CRC32C is computed on each
// piece just before it is written, while it is still in cache, so the data is read once.
//
// Crash safety: data goes to "<file>.tmp.<pid>", is fsynced, then renamed; only then is the
// ".done" completion record written the same way, then the directory is fsynced. A reader
// that sees a ".done" therefore sees a complete, durable stripe file.
//
// Every wait is bounded by timeout_s (invariant I6): workers check the deadline between
// pieces, and the caller stops waiting for a worker at the deadline plus a short grace.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "core.h"
#include "snapshot/engine.h"
#include "snapshot/header.h"
#include "snapshot/internal.h"

namespace jitc::snapshot {
namespace {

constexpr int kMaxThreads = 4;
constexpr uint64_t kWriteChunk = 16ull << 20;   // bytes per write(): large, cache-friendly
constexpr uint64_t kStageChunk = 64ull << 20;   // pinned staging buffer for CUDA tensors
constexpr double kJoinGrace = limits::kSnapshotJoinGraceS;   // past the deadline we still wait

using Clock = std::chrono::steady_clock;

std::string seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

std::string errno_text(const std::string& what, const std::string& path) {
  return os_error(what, path, errno);
}

bool write_all(int fd, const char* p, uint64_t n, std::string* why, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      *why = errno_text("write", path);
      return false;
    }
    p += w;
    n -= static_cast<uint64_t>(w);
  }
  return true;
}

bool mkdirs(const std::string& dir, std::string* why) {
  std::string cur;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    cur = dir.substr(0, pos);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), 0700) != 0 && errno != EEXIST) {
      *why = errno_text("mkdir", cur);
      return false;
    }
  }
  return true;
}

bool fsync_dir(const std::string& dir, std::string* why) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    *why = errno_text("open", dir);
    return false;
  }
  const bool ok = ::fsync(fd) == 0;
  if (!ok) *why = errno_text("fsync", dir);
  ::close(fd);
  return ok;
}

// Temporary name unique to this process: when a stripe is reassigned, the writer that was
// given up on may still be alive, and two writers must never share one temporary file.
std::string tmp_name(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}

// Write `text` durably to `path` (tmp + fsync + rename).
bool write_file_atomic(const std::string& path, const std::string& text, std::string* why) {
  const std::string tmp = tmp_name(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    *why = errno_text("open", tmp);
    return false;
  }
  bool ok = write_all(fd, text.data(), text.size(), why, tmp);
  if (ok && ::fsync(fd) != 0) {
    *why = errno_text("fsync", tmp);
    ok = false;
  }
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    *why = errno_text("rename", tmp);
    ok = false;
  }
  if (!ok) ::unlink(tmp.c_str());
  return ok;
}

struct Staging {
  void* buf = nullptr;
  ~Staging() {
    if (buf) free_host(buf);
  }
};

// Stream the data pieces into fd, checksumming as we go.
bool write_pieces(int fd, const StripeLayout& lay, Clock::time_point deadline, uint32_t* crc,
                  std::string* why, const std::string& path) {
  Staging staging;
  for (const Piece& pc : lay.pieces) {
    uint64_t done = 0;
    while (done < pc.nbytes) {
      if (Clock::now() > deadline) {
        *why = "timed out writing " + path;
        return false;
      }
      const char* src = pc.src + done;
      uint64_t n = std::min(pc.nbytes - done, kWriteChunk);
      if (pc.device >= 0) {
        // CUDA memory: copy into pinned host memory on the shim's stream (core.h), polled,
        // never a blocking CUDA call.
        n = std::min(pc.nbytes - done, kStageChunk);
        if (!staging.buf && !(staging.buf = alloc_host(kStageChunk))) {
          *why = "cannot allocate staging buffer for " + path;
          return false;
        }
        const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
        const char* cause = nullptr;
        if (!device_to_host(staging.buf, src, n, pc.device, left, &cause)) {
          *why = std::string("device copy for ") + path + ": " + (cause ? cause : "failed");
          return false;
        }
        src = static_cast<const char*>(staging.buf);
      }
      *crc = crc32c(*crc, src, n);
      if (!write_all(fd, src, n, why, path)) return false;
      done += n;
    }
  }
  return true;
}

}  // namespace

void write_one(const std::string& dir, const std::string& stem, const View& view,
               const std::vector<Chunk>& chunks, int j, int k, int64_t step,
               Clock::time_point deadline, StripeResult* res) {
  const std::string base = dir + "/" + stem;
  const std::string path = base + ".safetensors";
  const std::string tmp = tmp_name(path);
  res->file = path;
  const StripeLayout lay = build_stripe_layout(*view.gen, chunks, *view.meta, step, j, k);

  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    res->error = errno_text("open", tmp);
    return;
  }
  uint32_t crc = crc32c(0, lay.header.data(), lay.header.size());
  bool ok = write_all(fd, lay.header.data(), lay.header.size(), &res->error, tmp) &&
            write_pieces(fd, lay, deadline, &crc, &res->error, tmp);
  if (ok && ::fsync(fd) != 0) {
    res->error = errno_text("fsync", tmp);
    ok = false;
  }
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    res->error = errno_text("rename", tmp);
    ok = false;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    return;
  }
  res->bytes = lay.header.size() + lay.data_bytes;
  res->crc32c = crc;
  const std::string name = path.substr(path.rfind('/') + 1);
  const std::string done = "{\"step\":" + std::to_string(step) +
                           ",\"bytes\":" + std::to_string(res->bytes) +
                           ",\"crc32c\":" + std::to_string(crc) + ",\"fingerprint\":\"" +
                           view.gen->fingerprint + "\",\"stripe\":" + std::to_string(j) +
                           ",\"nstripes\":" + std::to_string(k) +
                           ",\"keys\":" + std::to_string(lay.nkeys) + ",\"file\":\"" +
                           json_escape(name) + "\"}\n";
  if (!write_file_atomic(base + ".done", done, &res->error)) return;
  if (!fsync_dir(dir, &res->error)) return;
  res->ok = true;
}

namespace {

// Shared with the worker threads by shared_ptr: if the caller gives up waiting (timeout),
// a straggling worker still has valid state to finish into.
struct Job {
  std::string dir;
  View view;
  std::vector<std::vector<Chunk>> assignment;
  std::vector<int> stripes;
  std::vector<std::string> stems;      // parallel to stripes
  int nstripes = 0;
  int64_t step = 0;
  Clock::time_point deadline;
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  size_t finished = 0;
  std::vector<StripeResult> results;   // guarded by mu once workers run
};

void worker(std::shared_ptr<Job> job) {
  for (;;) {
    const size_t i = job->next.fetch_add(1);
    if (i >= job->stripes.size()) return;
    const int j = job->stripes[i];
    StripeResult r;
    r.stripe = j;
    write_one(job->dir, job->stems[i], job->view, job->assignment[static_cast<size_t>(j)], j,
              job->nstripes, job->step, job->deadline, &r);
    if (!r.ok) debug("snapshot stripe %d-of-%d failed: %s", j, job->nstripes, r.error.c_str());
    std::lock_guard<std::mutex> lk(job->mu);
    job->results[i] = std::move(r);
    ++job->finished;
    job->cv.notify_all();
  }
}

}  // namespace

std::string os_error(const std::string& what, const std::string& path, int err) {
  // The errno's name first: "No space left on device" alone is hard to search for, and
  // the supervisor lifts the name into its terminal line and event log.
  const char* name = ::strerrorname_np(err);
  return what + " " + path + ": " + (name != nullptr ? name : "errno " + std::to_string(err)) +
         " (" + std::strerror(err) + ")";
}

bool plain_name(const std::string& name) {
  return !name.empty() && name.size() <= kMaxStemBytes && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos && name.find("..") == std::string::npos;
}

std::vector<StripeResult> write_stripes(const std::string& dir, int nstripes,
                                        const std::vector<int>& stripes,
                                        const std::vector<std::string>& stems, int64_t step,
                                        double timeout_s) {
  std::vector<StripeResult> out(stripes.size());
  for (size_t i = 0; i < stripes.size(); ++i) out[i].stripe = stripes[i];
  auto fail_all = [&](const std::string& why) {
    for (StripeResult& r : out) r.error = why;
    return out;
  };
  if (nstripes < 1) return fail_all("nstripes must be >= 1");
  for (int j : stripes)
    if (j < 0 || j >= nstripes) return fail_all("stripe index out of range");
  if (stems.size() != stripes.size()) return fail_all("one file stem per stripe needed");
  for (size_t i = 0; i < stems.size(); ++i) {
    if (!plain_name(stems[i])) return fail_all("bad file stem (not a plain file name)");
    for (size_t m = 0; m < i; ++m)
      if (stems[m] == stems[i]) return fail_all("two stripes given the same file stem");
  }
  if (!(timeout_s > 0)) return fail_all("timeout must be > 0");
  if (stripes.empty()) return out;

  auto job = std::make_shared<Job>();
  job->view = current_view();
  if (!job->view.gen) return fail_all("no registry committed");
  std::string why;
  if (!mkdirs(dir, &why)) return fail_all(why);
  job->dir = dir;
  job->assignment = assign_stripes(job->view.gen->entries, nstripes);
  job->stripes = stripes;
  job->stems = stems;
  job->nstripes = nstripes;
  job->step = step;
  job->deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(timeout_s));
  job->results = out;

  const int nthreads = std::min<int>(kMaxThreads, static_cast<int>(stripes.size()));
  std::vector<std::thread> threads;
  for (int t = 0; t < nthreads; ++t) threads.emplace_back(worker, job);

  std::unique_lock<std::mutex> lk(job->mu);
  const auto give_up = job->deadline + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(kJoinGrace));
  const bool all = job->cv.wait_until(lk, give_up, [&] {
    return job->finished == job->stripes.size();
  });
  out = job->results;
  lk.unlock();
  for (std::thread& t : threads) {
    // A worker stuck in a syscall past the grace keeps its own reference to the job.
    // WARNING: it may still read the registered tensors; the caller must treat the
    // registry as in use until the process exits (the recovery path does: it exits).
    if (all) t.join();
    else t.detach();
  }
  if (!all)
    for (StripeResult& r : out)
      if (!r.ok && r.error.empty()) r.error = "timed out after " + seconds(timeout_s) + " s";
  return out;
}

}  // namespace jitc::snapshot
