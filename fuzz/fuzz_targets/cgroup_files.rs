#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metrics_agent::fuzzing::cgroup_files(data));
