# Passed with -DCMAKE_PROJECT_INCLUDE=... when building against ROS 2 from PyPI
# wheels. Those wheels export *__rosidl_generator_py targets whose
# INTERFACE_INCLUDE_DIRECTORIES point at the wheel builder's
# /opt/python/cp311-cp311/... tree, which does not exist here, and CMake's
# generate step fails on a missing include directory of an imported target.
# At the end of configuration we drop every include directory that does not
# exist from every imported target we can see. A system ROS install never needs this.
function(_sakura_drop_missing_include_dirs)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_t IN LISTS _targets)
    get_target_property(_dirs ${_t} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_kept "")
    foreach(_d IN LISTS _dirs)
      if(_d MATCHES "^\\$<" OR EXISTS "${_d}")
        list(APPEND _kept "${_d}")
      endif()
    endforeach()
    set_target_properties(${_t} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _sakura_drop_missing_include_dirs)
