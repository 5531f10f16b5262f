"""The agent: devices, sampler, jobs and uplink."""
