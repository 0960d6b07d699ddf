/* libjitc public C API.
 *
 * This is the only header the Python binding (jitc/_shim.py, cffi ABI mode) reads; keep it
 * plain C with no preprocessor logic below the marker, because cffi parses the part between
 * the markers verbatim. Errors cross the ABI as jitc_status codes, never as exceptions.
 * Every blocking call takes a timeout.
 */
#ifndef JITC_H
#define JITC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define JITC_API __attribute__((visibility("default")))
#else
#define JITC_API
#endif

/* cffi-begin */
typedef enum {
  JITC_OK = 0,
  JITC_E_INVALID = 1,   /* bad argument */
  JITC_E_STATE = 2,     /* call not valid in the current state (e.g. not initialised) */
  JITC_E_IO = 3,        /* file or socket error; errno-style detail in jitc_last_error() */
  JITC_E_TIMEOUT = 4,   /* a bounded wait ran out */
  JITC_E_NOMEM = 5,
  JITC_E_CHANNEL = 6,   /* no supervisor connection */
  JITC_E_CORRUPT = 7,   /* checksum or format mismatch */
  JITC_E_BUSY = 8       /* a snapshot is in progress */
} jitc_status;

typedef enum {
  JITC_PHASE_IDLE = 0,
  JITC_PHASE_FORWARD = 1,
  JITC_PHASE_BACKWARD = 2,
  JITC_PHASE_OPTIMIZER = 3
} jitc_phase;

typedef enum {
  JITC_REGION_COLLECTIVE = 1,
  JITC_REGION_SYNC = 2,
  JITC_REGION_USER = 3
} jitc_region_kind;

typedef enum {
  JITC_CMD_NONE = 0,      /* timed out, nothing arrived */
  JITC_CMD_RELEASE = 1    /* supervisor says: recovery over, you may exit */
} jitc_command;

/* Version of this API (major*100 + minor). */
JITC_API int jitc_api_version(void);
/* Thread-local text of the last error, never NULL. */
JITC_API const char *jitc_last_error(void);

/* Activate the shim in this process: read configuration, connect to the supervisor if
 * JITC_SOCKET is set, send HELLO, start the agent thread (watchdog + command handling),
 * install the fatal-signal reporter and the SIGTERM deferral. Idempotent.
 * shard/num_shards: which replicated piece of state this rank holds (DDP: 0/1). */
JITC_API int jitc_init(int rank, int local_rank, int world_size, int shard, int num_shards);
/* Deactivate. clean=1 sends GOODBYE first. Joins the agent thread (bounded). */
JITC_API int jitc_shutdown(int clean);
/* 1 if jitc_init succeeded and a supervisor channel is connected, else 0. */
JITC_API int jitc_supervised(void);

/* Step accounting. step_begin(s) closes an open optimizer window, sets completed=s,
 * phase=FORWARD, resets marks and arms the step deadline. */
JITC_API int jitc_step_begin(int64_t step);
/* All steps done (loop finished): completed=step count, phase=IDLE, no deadline. */
JITC_API int jitc_steps_finished(int64_t completed);
JITC_API int jitc_set_phase(int phase);
JITC_API void jitc_mark(void);   /* progress mark, lock-free, a few ns */

/* Optimizer window (invariant I1). begin() waits (bounded by timeout_s) while a snapshot
 * is being written; returns JITC_E_TIMEOUT if it could not enter. The window stays open
 * until the next jitc_step_begin / jitc_steps_finished. */
JITC_API int jitc_optimizer_begin(double timeout_s);
JITC_API int jitc_optimizer_end(void);

/* Marked regions with their own deadline (0 = the hang timeout). Returns a region id >0. */
JITC_API int64_t jitc_region_begin(int kind, const char *name, double deadline_s);
JITC_API int jitc_region_end(int64_t id);

/* Report a failure seen by Python (kind: a name from jitc/failure_kinds.def, e.g. "exception"
 * or "peer"; JITC_E_INVALID for any other; detail: free text). Reported as fatal. */
JITC_API int jitc_report_failure(const char *kind, const char *detail);
/* Report that an injected fault is about to fire. */
JITC_API int jitc_report_fault_injected(const char *kind, int64_t step, int phase);
/* Report a completed resume. */
JITC_API int jitc_report_resumed(int64_t step, const char *manifest);
/* Wait for a command for Python (JITC_CMD_*), up to timeout_s. */
JITC_API int jitc_wait_command(double timeout_s);

/* Registry of state to snapshot. Build a new registry with begin/add.../commit; commit
 * swaps it in atomically with respect to snapshots. Pointers must stay valid until the
 * next commit (the Python session keeps the tensors alive). device: -1 CPU, >=0 CUDA. */
JITC_API int jitc_registry_begin(void);
JITC_API int jitc_registry_add(const char *name, const void *ptr, uint64_t nbytes,
                               const char *dtype, const int64_t *shape, int ndim, int device);
JITC_API int jitc_registry_commit(void);
/* Small replicated state (scheduler, extras, data position), serialized by Python.
 * Copied into a double buffer; a snapshot reads the copy that matches `completed`. */
JITC_API int jitc_set_meta(const void *data, size_t nbytes);

/* Write stripes of the registered state into dir now, from the calling thread's point of
 * view synchronously (used by the periodic safety net and shim-only mode; the supervisor's
 * SNAPSHOT command uses the same engine from the agent thread). stripes[i] goes to
 * "<dir>/<stems[i]>.safetensors" and ".done": the caller names the files
 * (jitc/snapshot/layout.py); a stem that is not a plain file name is JITC_E_INVALID.
 * Returns the step written in *step_out. */
JITC_API int jitc_snapshot_write(const char *dir, int nstripes, const int *stripes,
                                 const char *const *stems, int nlist, double timeout_s,
                                 int64_t *step_out);

/* One tensor for jitc_write_tensors: C-contiguous host memory, nbytes = numel * dtype size. */
typedef struct {
  const char *name;
  const char *dtype;      /* safetensors dtype string: "F32", "BF16", "I64", "U8", ... */
  const int64_t *shape;
  int ndim;
  const void *data;
  uint64_t nbytes;
} jitc_tensor;

/* Write the n given tensors (in this order) and the meta blob as a one-stripe snapshot of
 * `step` into dir ("<dir>/<stem>.safetensors" and its ".done" record, the stem named by the
 * caller as for jitc_snapshot_write; the caller publishes the manifest), by the engine that
 * writes the ranks' stripes, on the calling thread. dir must be
 * an absolute path strictly below root, by the rule SNAPSHOT commands obey below JITC_DIR:
 * no "..", missing levels created 0700, no symlink below root. Needs no jitc_init and starts
 * no thread: the supervisor writes a stage rebuilt by CheckFree with it. JITC_E_INVALID: a
 * bad argument or tensor, or dir refused; JITC_E_IO: the write failed (errno name and path
 * in jitc_last_error()). The tensors are read in place until it returns. */
JITC_API int jitc_write_tensors(const char *root, const char *dir, const char *stem,
                                int64_t step, const jitc_tensor *tensors, int n,
                                const void *meta, size_t meta_len, double timeout_s);

/* CRC32C (Castagnoli) of n bytes, continuing from crc (start with 0). Hardware-accelerated
 * where the CPU has it; the snapshot checksums use it, and Python verifies with it. */
JITC_API uint32_t jitc_crc32c(uint32_t crc, const void *data, size_t n);

/* What this side compiled in and reads, as JSON, for tests that hold it against the
 * Python side: the limits in force (or, before jitc_init, those the environment gives,
 * with "error" naming a malformed JITC_* value) written into buf (1 KiB is plenty), and
 * the failure table (jitc/failure_kinds.def; a string that lives as long as the library). */
JITC_API int jitc_limits(char *buf, size_t n);
JITC_API const char *jitc_failure_table(void);

/* Fault helpers used by jitc/faults.py. */
JITC_API void jitc_fault_segv(void);                 /* a real invalid memory access */
JITC_API int jitc_fault_arm(const char *kind);       /* "cuda-error" | "nccl-error" | "nccl-hang" */
/* cffi-end */

#ifdef __cplusplus
}
#endif
#endif
