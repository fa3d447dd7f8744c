//! Veil's integration tests, gathered in one binary. Everything is real: the `veil` binary,
//! wasmtime, DataFusion and SQLite; nothing of ours is mocked.
mod common;

mod accounting;
mod api_schema;
mod audit;
mod bad_input;
mod blocks;
mod check;
mod clients;
mod crash;
mod demo;
mod durability;
mod identity;
mod languages;
mod link;
mod migrations;
mod noninterference;
mod pipeline;
mod privacy_audit;
mod redteam;
mod remote_cli;
mod results;
mod sandbox;
mod service;
mod sql;
mod structure;
mod versions;
mod walkthrough;
