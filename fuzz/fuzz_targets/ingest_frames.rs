#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| metrics_aggregator::fuzzing::ingest_frames(data));
