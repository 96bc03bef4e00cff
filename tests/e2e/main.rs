//! End-to-end tests: the real binary over real sockets. Each module is named
//! after the failure it prevents.

mod harness;

mod admin_commands_need_the_servers_database;
mod hostile_stream_requests_change_nothing;
mod permission_changes_reach_open_streams;
mod resume_never_loses_or_repeats;
mod slow_clients_cannot_hold_connections;
mod stale_bootstrap_key_is_explained;
mod stream_connections_behave_alike;
mod stream_options_are_enforced;
mod stream_refuses_bad_credentials;
mod streams_survive_proxies_and_expiry;
mod telemetry_reaches_only_permitted_applications;
mod websocket_streams_behave;
