// Failure kinds and severities, generated from the one table jitc/failure_kinds.def (which
// says what each column means). Nothing here is hand-written per kind: a new kind is a line
// in the table. Every lookup is a plain array read, so async-signal-safe.
#pragma once

#include <cstddef>
#include <cstring>

namespace jitc {

enum class Severity {
#define JITC_FAILURE(id, name, state, hang, severity, blame)
#define JITC_SEVERITY(id, name) id,
#include "../jitc/failure_kinds.def"
#undef JITC_FAILURE
#undef JITC_SEVERITY
};

enum class FailureKind {
#define JITC_FAILURE(id, name, state, hang, severity, blame) id,
#define JITC_SEVERITY(id, name)
#include "../jitc/failure_kinds.def"
#undef JITC_FAILURE
#undef JITC_SEVERITY
};

enum class Blame { Self, Progress, Never };

struct KindInfo {
  const char* name;
  bool trusted;       // the reporter's state may still be written
  bool hang;
  bool by_code;       // severity decided by the CUDA/NCCL code (else always fatal)
  Blame blame;
};

namespace failure_table {
constexpr bool TRUSTED = true, SUSPECT = false, HANG = true, NOHANG = false;
constexpr bool BYCODE = true, FATAL = false;
constexpr Blame SELF = Blame::Self, PROGRESS = Blame::Progress, NEVER = Blame::Never;

constexpr KindInfo kKinds[] = {
#define JITC_FAILURE(id, name, state, hang, severity, blame) {name, state, hang, severity, blame},
#define JITC_SEVERITY(id, name)
#include "../jitc/failure_kinds.def"
#undef JITC_FAILURE
#undef JITC_SEVERITY
};

constexpr const char* kSeverities[] = {
#define JITC_FAILURE(id, name, state, hang, severity, blame)
#define JITC_SEVERITY(id, name) name,
#include "../jitc/failure_kinds.def"
#undef JITC_FAILURE
#undef JITC_SEVERITY
};
}  // namespace failure_table

constexpr size_t kNumKinds = sizeof failure_table::kKinds / sizeof failure_table::kKinds[0];
constexpr size_t kNumSeverities =
    sizeof failure_table::kSeverities / sizeof failure_table::kSeverities[0];

inline const KindInfo& kind_info(FailureKind k) {
  return failure_table::kKinds[static_cast<size_t>(k)];
}
inline const char* kind_name(FailureKind k) { return kind_info(k).name; }
inline const char* severity_name(Severity s) {
  return failure_table::kSeverities[static_cast<size_t>(s)];
}
// The severity a report of kind k has when nothing more specific (a return code) decides.
inline Severity default_severity(FailureKind) { return Severity::Fatal; }

// Kind by wire name; false if the table has no such kind.
inline bool kind_from_name(const char* name, FailureKind* out) {
  if (name == nullptr) return false;
  for (size_t i = 0; i < kNumKinds; ++i) {
    if (std::strcmp(failure_table::kKinds[i].name, name) == 0) {
      *out = static_cast<FailureKind>(i);
      return true;
    }
  }
  return false;
}

}  // namespace jitc
