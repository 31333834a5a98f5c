# ONNX Runtime custom-op library (plugins/ort_custom_ops) over the ssd_kernels C ABI; included by
# plugins/CMakeLists.txt once the kernel targets exist. Builds nothing, with a status message, when no ONNX Runtime
# headers are found.
#
# Headers (onnxruntime_c_api.h and what it includes, from microsoft/onnxruntime include/onnxruntime/core/session),
# first found wins: OnnxRuntime_INCLUDE_DIR (cache or environment variable), then third_party/onnxruntime/include
# of this repository. Any ONNX Runtime >= 1.17 headers work; nothing links libonnxruntime (the link uses
# --no-undefined: ONNX Runtime hands the library its API table at registration).
#
# Targets: ssd_ort_custom_ops -> libssd_ort_custom_ops.so, for SessionOptions.register_custom_ops_library;
#          ssd_ort_custom_ops_cpu_check, the same registered for the CPU provider with the kernel calls left out
#          (tests without a GPU; not built by default).

set(_ssd_ort_dir "${CMAKE_CURRENT_LIST_DIR}")
set(OnnxRuntime_INCLUDE_DIR "${OnnxRuntime_INCLUDE_DIR}" CACHE PATH "Directory holding onnxruntime_c_api.h")

set(SSD_ORT_INCLUDE_DIR "")
foreach(_candidate IN ITEMS "${OnnxRuntime_INCLUDE_DIR}" "$ENV{OnnxRuntime_INCLUDE_DIR}")
  if(_candidate AND NOT SSD_ORT_INCLUDE_DIR)
    if(NOT EXISTS "${_candidate}/onnxruntime_c_api.h")
      message(FATAL_ERROR "OnnxRuntime_INCLUDE_DIR=${_candidate} has no onnxruntime_c_api.h")
    endif()
    set(SSD_ORT_INCLUDE_DIR "${_candidate}")
  endif()
endforeach()
if(NOT SSD_ORT_INCLUDE_DIR AND EXISTS "${_ssd_ort_dir}/../../third_party/onnxruntime/include/onnxruntime_c_api.h")
  get_filename_component(SSD_ORT_INCLUDE_DIR "${_ssd_ort_dir}/../../third_party/onnxruntime/include" ABSOLUTE)
endif()
if(NOT SSD_ORT_INCLUDE_DIR)
  message(STATUS "ssd ONNX Runtime custom ops: no ONNX Runtime headers (set OnnxRuntime_INCLUDE_DIR); not built")
  return()
endif()
if(NOT TARGET ssd_kernels_static)
  message(STATUS "ssd ONNX Runtime custom ops: no ssd_kernels_static target; not built")
  return()
endif()
file(STRINGS "${SSD_ORT_INCLUDE_DIR}/onnxruntime_c_api.h" _ssd_ort_api REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX REPLACE "[^0-9]" "" SSD_ORT_API_VERSION "${_ssd_ort_api}")
message(STATUS
  "ssd ONNX Runtime custom ops: ONNX Runtime API ${SSD_ORT_API_VERSION} headers from ${SSD_ORT_INCLUDE_DIR}")

find_package(CUDAToolkit REQUIRED)

function(ssd_ort_custom_op_library target)
  add_library(${target} SHARED
    "${_ssd_ort_dir}/ortOp.cpp"
    "${_ssd_ort_dir}/ops.cpp"
    "${_ssd_ort_dir}/library.cpp")
  target_include_directories(${target} PRIVATE "${_ssd_ort_dir}")
  target_include_directories(${target} SYSTEM PRIVATE "${SSD_ORT_INCLUDE_DIR}" ${CUDAToolkit_INCLUDE_DIRS})
  # the static, PIC kernels with the CUDA runtime linked in: one self-contained file that needs only the driver
  target_link_libraries(${target} PRIVATE ssd_kernels_static)
  set_target_properties(${target} PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF
    POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON SKIP_BUILD_RPATH ON
    LINK_DEPENDS "${_ssd_ort_dir}/exports.map")
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra)
  endif()
  target_link_options(${target} PRIVATE
    "LINKER:--version-script=${_ssd_ort_dir}/exports.map" "LINKER:--no-undefined")
endfunction()

ssd_ort_custom_op_library(ssd_ort_custom_ops)
install(TARGETS ssd_ort_custom_ops LIBRARY DESTINATION lib)
# The CPU check build (ortOp.h, SSD_ORT_CPU_CHECK): for tests on machines without a GPU; never installed, not built
# by default.
ssd_ort_custom_op_library(ssd_ort_custom_ops_cpu_check)
target_compile_definitions(ssd_ort_custom_ops_cpu_check PRIVATE SSD_ORT_CPU_CHECK=1)
set_target_properties(ssd_ort_custom_ops_cpu_check PROPERTIES EXCLUDE_FROM_ALL ON)
