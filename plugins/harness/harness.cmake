# The TensorRT-free plugin harness (see plugins/README.md); included by cmake/trt_plugins.cmake. It loads the plugin
# library with dlopen at run time, so it does not link it.
add_executable(ssd_plugin_harness
  "${_ssd_plugins_dir}/harness/main.cpp"
  "${_ssd_plugins_dir}/harness/harnessUtil.cpp"
  "${_ssd_plugins_dir}/harness/exprBuilder.cpp"
  "${_ssd_plugins_dir}/harness/hostChecks.cpp"
  "${_ssd_plugins_dir}/harness/caseManifest.cpp"
  "${_ssd_plugins_dir}/harness/gpuRun.cpp")
ssd_trt_compile_settings(ssd_plugin_harness)
target_link_libraries(ssd_plugin_harness PRIVATE CUDA::cudart ${CMAKE_DL_LIBS})

# Stand-in for libnvinfer's registry: its soname is what the autoreg library looks for.
add_library(ssd_fake_nvinfer SHARED "${_ssd_plugins_dir}/harness/fakeRegistry.cpp")
ssd_trt_compile_settings(ssd_fake_nvinfer)
set_target_properties(ssd_fake_nvinfer PROPERTIES NO_SONAME ON)
target_link_options(ssd_fake_nvinfer PRIVATE "LINKER:-soname,libnvinfer.so.${SSD_TRT_VERSION_MAJOR}")
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # It overrides TensorRT 10's deprecated registry members, which it must.
  target_compile_options(ssd_fake_nvinfer PRIVATE -Wno-deprecated-declarations)
endif()
