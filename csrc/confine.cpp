// Confinement of the agent's writes to its snapshot root. See confine.h.
#include "confine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <vector>

#include "snapshot/internal.h"

namespace jitc::confine {
namespace {

std::mutex g_mu;
std::string g_root;   // absolute, normalised; empty: none

// "/" + the path's components, "." and empty ones dropped. false if it holds "..": the
// commands have no reason to climb, and lexical ".." past a symlink means something else
// to the kernel than to a string comparison.
bool components(const std::string& path, std::vector<std::string>* out) {
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    std::string part = path.substr(pos, next - pos);
    if (part == "..") return false;
    if (!part.empty() && part != ".") out->push_back(part);
    pos = next + 1;
  }
  return true;
}

std::string join(const std::vector<std::string>& parts, size_t from = 0) {
  std::string s;
  for (size_t i = from; i < parts.size(); ++i) s += "/" + parts[i];
  return s.empty() ? "/" : s;
}

// If `path` is `root` or below it (component-wise), the components below it.
bool below(const std::vector<std::string>& path, const std::vector<std::string>& root,
           std::vector<std::string>* rest) {
  if (path.size() < root.size()) return false;
  for (size_t i = 0; i < root.size(); ++i)
    if (path[i] != root[i]) return false;
  rest->assign(path.begin() + static_cast<long>(root.size()), path.end());
  return true;
}

// A path as a message shows it: a command's path may be 60 KiB, the answer must fit.
std::string shown(const std::string& path) {
  constexpr size_t kMax = 200;
  return path.size() <= kMax ? path : path.substr(0, kMax) + "...";
}

// "<what> <path>: EACCES (Permission denied)": the spelling of every snapshot OS error.
std::string errno_text(const char* what, const std::string& path) {
  const int err = errno;
  return snapshot::os_error(what, shown(path), err);
}

// `root` made absolute (against the current directory) and normalised; empty if that
// cannot be done, which refuses every directory.
std::string normalised(const std::string& root) {
  std::string abs = root;
  if (!root.empty() && root[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == nullptr) return std::string();
    abs = std::string(cwd) + "/" + root;
  }
  std::vector<std::string> parts;
  return (!abs.empty() && components(abs, &parts)) ? join(parts) : std::string();
}

}  // namespace

void set_root(const std::string& root) {
  std::string n = normalised(root);
  std::lock_guard<std::mutex> lock(g_mu);
  g_root = n;
}

bool snapshot_dir(const std::string& dir, std::string* out, std::string* why) {
  std::string root;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    root = g_root;
  }
  if (root.empty()) {
    *why = "no snapshot root (JITC_DIR) was given at start: refusing to write " + shown(dir);
    return false;
  }
  return dir_below(root, dir, out, why);
}

bool dir_below(const std::string& given_root, const std::string& dir, std::string* out,
               std::string* why) {
  const std::string root = normalised(given_root);
  if (root.empty()) {
    *why = "no usable snapshot root (" + shown(given_root) + "): refusing to write " + shown(dir);
    return false;
  }
  if (dir.empty() || dir[0] != '/' || dir.find('\0') != std::string::npos) {
    *why = "snapshot directory must be an absolute path below " + shown(root) + ": " + shown(dir);
    return false;
  }
  std::vector<std::string> want, lexical, rest;
  if (!components(dir, &want)) {
    *why = "snapshot directory holds '..': " + shown(dir);
    return false;
  }
  char real_buf[PATH_MAX];
  if (realpath(root.c_str(), real_buf) == nullptr) {
    *why = errno_text("snapshot root", root);
    return false;
  }
  std::string real = real_buf;
  std::vector<std::string> real_parts;
  components(root, &lexical);
  components(real, &real_parts);
  // The supervisor names the root as it resolved it; a user may spell it as set.
  if (!below(want, real_parts, &rest) && !below(want, lexical, &rest)) {
    *why = "snapshot directory " + shown(dir) + " is outside the snapshot root " + shown(root);
    return false;
  }
  if (rest.empty()) {
    *why = "snapshot directory " + shown(dir) + " is the snapshot root itself, not a directory in it";
    return false;
  }
  int fd = open(real.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    *why = errno_text("open", real);
    return false;
  }
  std::string path = real;
  for (const std::string& part : rest) {
    path += "/" + part;
    if (mkdirat(fd, part.c_str(), 0700) != 0 && errno != EEXIST) {
      *why = errno_text("mkdir", path);
      close(fd);
      return false;
    }
    int next = openat(fd, part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int err = errno;
    close(fd);
    if (next < 0) {
      errno = err;
      *why = (err == ELOOP || err == ENOTDIR)
                 ? "snapshot directory " + shown(dir) + ": " + shown(path) + " is a symlink or not a directory"
                 : errno_text("open", path);
      return false;
    }
    fd = next;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_uid != geteuid()) {
      *why = "snapshot directory " + shown(dir) + ": " + shown(path) + " is not owned by this user";
      close(fd);
      return false;
    }
  }
  close(fd);
  *out = path;
  return true;
}

}  // namespace jitc::confine
