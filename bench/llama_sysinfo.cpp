// What a prebuilt llama.cpp does on this machine: its build, and which CPU backend variant it loads.
//
// The prebuilt libraries (bench/llama_cpp_prebuilt.sh) ship one CPU backend per x86 generation
// (libggml-cpu-haswell.so, -zen4.so, -sapphirerapids.so, ...); ggml picks the best one the CPU can run when the
// backends are loaded. This program loads them as llama-bench does and prints, one `key=value` per line:
//
//   build_number, commit, compiler   the llama.cpp build the libraries come from
//   cpu_backend_lib, cpu_variant     the CPU backend file that was loaded, and its variant name (e.g. zen4)
//   cpu_features                     the instruction-set features that variant was built for (e.g. AVX512_VNNI)
//   devices                          every device ggml sees (type:name:description), ';'-separated
//
// Built by bench/llama_cpp_prebuilt.sh against the package's libraries:
//   g++ -std=c++17 -O2 -Iinclude -Iggml/include -Icommon bench/llama_sysinfo.cpp -l... -Wl,-rpath,'$ORIGIN'
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "build-info.h"
#include "ggml-backend.h"
#include "llama.h"

static void quiet_log(ggml_log_level, const char *, void *) {}

static const char * type_name(enum ggml_backend_dev_type t) {
    switch (t) {
        case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        default: return "other";
    }
}

int main() {
    ggml_log_set(quiet_log, nullptr);
    llama_log_set(quiet_log, nullptr);
    ggml_backend_load_all();

    std::printf("build_number=%d\n", llama_build_number());
    std::printf("commit=%s\n", llama_commit());
    std::printf("compiler=%s\n", llama_compiler());

    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!cpu) {
        std::fprintf(stderr, "llama_sysinfo: no CPU backend could be loaded (none of libggml-cpu-*.so runs here?)\n");
        return 1;
    }
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu);

    // The file the CPU backend was loaded from: any function it exports lies in it.
    void * fn = ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
    std::string lib = "unknown", variant = "unknown";
    Dl_info info;
    if (fn && dladdr(fn, &info) && info.dli_fname) {
        lib = info.dli_fname;
        std::string base = lib.substr(lib.rfind('/') + 1);
        const std::string pre = "libggml-cpu-", suf = ".so";
        if (base.compare(0, pre.size(), pre) == 0 && base.size() > pre.size() + suf.size()) {
            variant = base.substr(pre.size(), base.size() - pre.size() - suf.size());
        } else {
            variant = base;
        }
    }
    std::printf("cpu_backend_lib=%s\n", lib.c_str());
    std::printf("cpu_variant=%s\n", variant.c_str());

    std::string feats;
    if (fn) {
        auto get = (ggml_backend_get_features_t) fn;
        for (ggml_backend_feature * f = get(reg); f && f->name; f++) {
            // Boolean features read "1"; others (e.g. the variant's name) carry a value.
            if (!feats.empty()) feats += ' ';
            feats += f->name;
            if (f->value && std::strcmp(f->value, "1") != 0) {
                feats += '=';
                feats += f->value;
            }
        }
    }
    std::printf("cpu_features=%s\n", feats.c_str());

    std::string devs;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        if (!devs.empty()) devs += ';';
        devs += std::string(type_name(ggml_backend_dev_type(d))) + ':' + ggml_backend_dev_name(d) + ':' +
                ggml_backend_dev_description(d);
    }
    std::printf("devices=%s\n", devs.c_str());
    return 0;
}
