// Our own declarations of the NCCL entry points we interpose.
//
// NCCL's C ABI has been stable since 2.0 (enum values and prototypes only ever gain new
// members at the end), and nccl.h is rarely installed where torch brings libnccl.so.2 in a
// wheel, so we do not depend on it. Only what the wrappers touch is declared.
#pragma once

#include "cuda_api.h"

extern "C" {
typedef struct ncclComm* ncclComm_t;
typedef int ncclDataType_t;
typedef int ncclRedOp_t;
typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
} ncclResult_t;
}
