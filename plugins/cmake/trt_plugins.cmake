# TensorRT plugin library (IPluginV3) over the ssd_kernels C ABI; included by plugins/CMakeLists.txt once the
# ssd_kernels target exists. Builds nothing, with a status message, when no TensorRT headers are found.
#
# Headers, first found wins: TensorRT_INCLUDE_DIR, TensorRT_ROOT/include (each a cache or environment variable),
# then third_party/TensorRT/include of this repository. Any TensorRT >= 10 (IPluginV3) works; nothing links
# libnvinfer (the link uses --no-undefined, so a stray TensorRT call fails the build).
#
# Targets:
#   ssd_trt_plugins          for IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, tensorrt's load_library
#   ssd_trt_plugins_autoreg  registers itself with the libnvinfer already loaded, for ONNX Runtime's TensorRT EP
#                            (trt_extra_plugin_lib_paths); build it against the headers of that TensorRT major
#   ssd_plugin_harness       host checks and GPU enqueue without TensorRT (plugins/harness), if SSD_PLUGIN_HARNESS
# The object libraries ssd_trt_plugin_objects and ssd_trt_selfregister_object compile every plugin source without
# the kernels (a quick check against another TensorRT's headers).

set(_ssd_plugins_dir "${CMAKE_CURRENT_LIST_DIR}/..")
get_filename_component(_ssd_plugins_dir "${_ssd_plugins_dir}" ABSOLUTE)

set(TensorRT_INCLUDE_DIR "${TensorRT_INCLUDE_DIR}" CACHE PATH "Directory holding TensorRT's NvInferRuntime.h")
set(TensorRT_ROOT "${TensorRT_ROOT}" CACHE PATH "TensorRT root, headers in include/")
option(SSD_PLUGIN_HARNESS "Build the TensorRT-free plugin harness with the plugin library" ON)

# An explicit location that lacks the headers is a mistake worth stopping for; the convenience path is not.
set(SSD_TRT_INCLUDE_DIR "")
foreach(_candidate IN ITEMS "${TensorRT_INCLUDE_DIR}" "$ENV{TensorRT_INCLUDE_DIR}")
  if(_candidate AND NOT SSD_TRT_INCLUDE_DIR)
    if(NOT EXISTS "${_candidate}/NvInferRuntime.h")
      message(FATAL_ERROR "TensorRT_INCLUDE_DIR=${_candidate} has no NvInferRuntime.h")
    endif()
    set(SSD_TRT_INCLUDE_DIR "${_candidate}")
  endif()
endforeach()
foreach(_candidate IN ITEMS "${TensorRT_ROOT}" "$ENV{TensorRT_ROOT}")
  if(_candidate AND NOT SSD_TRT_INCLUDE_DIR)
    if(NOT EXISTS "${_candidate}/include/NvInferRuntime.h")
      message(FATAL_ERROR "TensorRT_ROOT=${_candidate} has no include/NvInferRuntime.h")
    endif()
    set(SSD_TRT_INCLUDE_DIR "${_candidate}/include")
  endif()
endforeach()
if(NOT SSD_TRT_INCLUDE_DIR AND EXISTS "${_ssd_plugins_dir}/../third_party/TensorRT/include/NvInferRuntime.h")
  get_filename_component(SSD_TRT_INCLUDE_DIR "${_ssd_plugins_dir}/../third_party/TensorRT/include" ABSOLUTE)
endif()

if(NOT SSD_TRT_INCLUDE_DIR)
  message(STATUS "ssd TensorRT plugins: no TensorRT headers (set TensorRT_INCLUDE_DIR or TensorRT_ROOT); not built")
  return()
endif()
if(NOT TARGET ssd_kernels)
  message(STATUS "ssd TensorRT plugins: no ssd_kernels target; not built")
  return()
endif()

# TensorRT 11 defines NV_TENSORRT_MAJOR through TRT_MAJOR_ENTERPRISE, 10 directly.
file(READ "${SSD_TRT_INCLUDE_DIR}/NvInferVersion.h" _ssd_trt_version_h)
foreach(_part MAJOR MINOR PATCH)
  if(_ssd_trt_version_h MATCHES "#define TRT_${_part}_ENTERPRISE ([0-9]+)")
    set(SSD_TRT_VERSION_${_part} "${CMAKE_MATCH_1}")
  elseif(_ssd_trt_version_h MATCHES "#define NV_TENSORRT_${_part} ([0-9]+)")
    set(SSD_TRT_VERSION_${_part} "${CMAKE_MATCH_1}")
  endif()
endforeach()
set(SSD_TRT_VERSION "${SSD_TRT_VERSION_MAJOR}.${SSD_TRT_VERSION_MINOR}.${SSD_TRT_VERSION_PATCH}")
if(NOT SSD_TRT_VERSION_MAJOR OR SSD_TRT_VERSION_MAJOR LESS 10)
  message(STATUS "ssd TensorRT plugins: headers in ${SSD_TRT_INCLUDE_DIR} are TensorRT ${SSD_TRT_VERSION}, "
                 "IPluginV3 needs >= 10; not built")
  return()
endif()
message(STATUS "ssd TensorRT plugins: TensorRT ${SSD_TRT_VERSION} headers from ${SSD_TRT_INCLUDE_DIR}")

find_package(CUDAToolkit REQUIRED)

# Compile settings of every translation unit that sees TensorRT headers.
function(ssd_trt_compile_settings target)
  target_include_directories(${target} PRIVATE "${_ssd_plugins_dir}/common" "${_ssd_plugins_dir}/kernels")
  target_include_directories(${target} SYSTEM PRIVATE "${SSD_TRT_INCLUDE_DIR}" ${CUDAToolkit_INCLUDE_DIRS})
  set_target_properties(${target} PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF
    POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra)
  endif()
endfunction()

add_library(ssd_trt_plugin_objects OBJECT
  "${_ssd_plugins_dir}/common/pluginLogging.cpp"
  "${_ssd_plugins_dir}/common/pluginSpec.cpp"
  "${_ssd_plugins_dir}/common/shapeMatcher.cpp"
  "${_ssd_plugins_dir}/common/ssdPluginBase.cpp"
  "${_ssd_plugins_dir}/common/ssdPluginCreator.cpp"
  "${_ssd_plugins_dir}/common/pluginLibrary.cpp"
  "${_ssd_plugins_dir}/SsdChunkScan/ssdChunkScanPlugin.cpp"
  "${_ssd_plugins_dir}/SsdStateUpdate/ssdStateUpdatePlugin.cpp"
  "${_ssd_plugins_dir}/CausalConv1d/causalConv1dPlugin.cpp"
  "${_ssd_plugins_dir}/GatedRmsNorm/gatedRmsNormPlugin.cpp"
  "${_ssd_plugins_dir}/SsdChunkScanPacked/ssdChunkScanPackedPlugin.cpp"
  "${_ssd_plugins_dir}/CausalConv1dPacked/causalConv1dPackedPlugin.cpp")
ssd_trt_compile_settings(ssd_trt_plugin_objects)
add_library(ssd_trt_selfregister_object OBJECT "${_ssd_plugins_dir}/common/selfRegister.cpp")
ssd_trt_compile_settings(ssd_trt_selfregister_object)

# The static, PIC kernels make a self-contained plugin library (a single file to deploy); the shared ones are the
# fallback, found next to the plugin library through $ORIGIN.
if(TARGET ssd_kernels_static)
  set(_ssd_trt_kernels ssd_kernels_static)
  set(_ssd_trt_rpath_properties SKIP_BUILD_RPATH ON)
else()
  set(_ssd_trt_kernels ssd_kernels)
  set(_ssd_trt_rpath_properties INSTALL_RPATH "$ORIGIN")
endif()

function(ssd_trt_plugin_library target)
  add_library(${target} SHARED ${ARGN} $<TARGET_OBJECTS:ssd_trt_plugin_objects>)
  ssd_trt_compile_settings(${target})
  target_link_libraries(${target} PRIVATE ${_ssd_trt_kernels} ${CMAKE_DL_LIBS})
  target_link_options(${target} PRIVATE
    "LINKER:--version-script=${_ssd_plugins_dir}/common/exports.map" "LINKER:--no-undefined")
  set_target_properties(${target} PROPERTIES
    LINK_DEPENDS "${_ssd_plugins_dir}/common/exports.map" ${_ssd_trt_rpath_properties})
  install(TARGETS ${target} LIBRARY DESTINATION lib)
endfunction()

ssd_trt_plugin_library(ssd_trt_plugins)
ssd_trt_plugin_library(ssd_trt_plugins_autoreg $<TARGET_OBJECTS:ssd_trt_selfregister_object>)

if(SSD_PLUGIN_HARNESS)
  include("${_ssd_plugins_dir}/harness/harness.cmake")
endif()
