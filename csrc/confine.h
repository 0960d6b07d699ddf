// Where the rank may write: only below the snapshot root it was given at start (JITC_DIR).
//
// The supervisor names the directory of each snapshot in its SNAPSHOT command. A socket
// that is not the user's own supervisor (issue 13: a run dir swapped by another user) must
// not be able to make the rank write its weights elsewhere, so the agent resolves the
// named directory against its root itself: an absolute path, no "..", no symlink below the
// root, each missing level created 0700 and opened without following links.
#pragma once

#include <string>

namespace jitc::confine {

// Remembers `root` (relative to the current directory if not absolute) as the only place
// SNAPSHOT commands may write. Called once at activation; empty: no root, every command
// is refused.
void set_root(const std::string& root);

// The directory to write for a command naming `dir`: strictly below the root, created
// (0700 per missing level) if needed, every level below the root a real directory owned
// by this user. On success *out is the path through the root's real path. false with a
// reason (nothing is created outside the root).
bool snapshot_dir(const std::string& dir, std::string* out, std::string* why);

// The same rule against a root named by the caller, for a process that has no JITC_DIR
// (the supervisor writing a rebuilt stage through jitc_write_tensors).
bool dir_below(const std::string& root, const std::string& dir, std::string* out,
               std::string* why);

}  // namespace jitc::confine
