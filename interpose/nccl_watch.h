// Completion tracking of NCCL operations, for hang detection (issue 4, part 3).
//
// After a collective is issued we record an event (real cudaEventRecord, from a pool of
// events created with cudaEventDisableTiming) on its stream and remember the operation in a
// fixed ring. The core's agent thread calls poll() every tick: it asks each outstanding
// event with cudaEventQuery only (never a blocking call, invariant I5) and each known
// communicator with ncclCommGetAsyncError. An operation still not complete a hang timeout
// after the first tick that saw it is a hang and is reported as nccl-hang, naming the
// operation.
#pragma once

#include <cstdint>

#include "nccl_api.h"

namespace jitc::interpose::watch {

// Capacity of the ring of outstanding operations. When it is full, new operations are not
// tracked (the oldest ones, which would reveal a hang, stay).
constexpr int kRing = 256;

// An operation was issued on `stream` and its call succeeded. never_complete: an injected
// nccl-hang; the op is tracked without an event and never counts as complete.
void issued(ncclComm_t comm, const char* op, cudaStream_t stream, bool never_complete);
// The same with never_complete false: the form every collective calls, kept lean.
void issued(ncclComm_t comm, const char* op, cudaStream_t stream);

// Group calls: inside ncclGroupStart/End, operations are only launched by the outermost
// ncclGroupEnd, so an event recorded earlier would complete too soon. issued() queues them
// on the calling thread and group_end() issues them. Up to 32 per group are watched.
void group_start();
void group_end(bool launched);

// An injected nccl-error: ncclCommGetAsyncError on comm reports err from now on.
void poison(ncclComm_t comm, ncclResult_t err);
// The injected error of comm, or ncclSuccess.
ncclResult_t poisoned(ncclComm_t comm);

// The communicator is being aborted or destroyed: stop watching it and its operations.
// Waits (bounded by the poller's own non-blocking pass) until the poller no longer uses it.
void forget(ncclComm_t comm);

// One pass of the watchdog (registered with jitc::add_poller). Never blocks.
void poll(uint64_t now_ns);

// Operations tracked, and not tracked because the ring was full (tests, debugging).
struct Stats {
  uint64_t tracked, dropped, hangs;
};
Stats stats();

}  // namespace jitc::interpose::watch
