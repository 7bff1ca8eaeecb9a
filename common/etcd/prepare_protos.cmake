# Copies one of etcd's .proto files (Debian's golang-etcd-server-dev) for protoc, without what
# only Go's toolchain has: gogoproto's options and import, and the google.api.http annotations of
# grpc-gateway and their import. Options change the generated Go code, never the wire format, so
# the C++ messages and stubs made from the copy speak to etcd exactly as its own client does.
# Run as a script so that the build needs nothing beyond CMake:
#
#   cmake -DIN=/usr/share/gocode/src/go.etcd.io/etcd/mvcc/mvccpb/kv.proto \
#         -DOUT=build/etcd_proto/etcd/mvcc/mvccpb/kv.proto -P prepare_protos.cmake
#
# The `etcd/...` import paths stay as they are: the copies go under a directory named etcd.
if(NOT DEFINED IN OR NOT DEFINED OUT)
  message(FATAL_ERROR "prepare_protos.cmake: usage: cmake -DIN=<proto> -DOUT=<proto> -P ...")
endif()
file(READ "${IN}" text)

string(REGEX REPLACE "import \"gogoproto/gogo.proto\";" "" text "${text}")
string(REGEX REPLACE "import \"google/api/annotations.proto\";" "" text "${text}")
# File options: `option (gogoproto.marshaler_all) = true;`.
string(REGEX REPLACE "option \\(gogoproto\\.[a-z_]+\\) = [^;]*;" "" text "${text}")
# Field options, alone or in a list: `[(gogoproto.nullable) = false]`,
# `[(gogoproto.nullable) = false, json_name = "x"]`, `[json_name = "x", (gogoproto.x) = y]`.
string(REGEX REPLACE "\\[ *\\(gogoproto\\.[a-z_]+\\) = [^],]*\\]" "" text "${text}")
string(REGEX REPLACE "\\(gogoproto\\.[a-z_]+\\) = [^],]*, *" "" text "${text}")
string(REGEX REPLACE ", *\\(gogoproto\\.[a-z_]+\\) = [^],]*" "" text "${text}")
# Method options: `option (google.api.http) = { post: "/v3/kv/range" body: "*" };` over several
# lines, with at most one level of braces inside (`additional_bindings { ... }`).
string(REGEX REPLACE "option \\(google\\.api\\.http\\) = {([^{}]|{[^{}]*})*};?" "" text
  "${text}")

# A form the expressions above do not know (a newer etcd) must fail here, not in protoc with a
# message about a missing import.
string(REGEX MATCH "\\(gogoproto\\.|\\(google\\.api\\.|gogoproto/|google/api/" left "${text}")
if(left)
  message(FATAL_ERROR "prepare_protos.cmake: ${IN}: '${left}' is left after removing gogoproto "
    "and google.api options; this etcd's .proto files need another rule here")
endif()

# Written only when it changes, so that protoc and the compiler do not run again for nothing.
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
