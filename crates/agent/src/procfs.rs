//! Fields of `/proc/PID/stat`, which the agent reads to tell processes apart (a pid and its
//! start time name one process for good) and to find a component's process group.

use std::str::FromStr;

/// Field `field` of `/proc/PID/stat`, numbered as in proc(5) (1 is the pid, 3 the state, 5 the
/// process group, 22 the start time), parsed; `None` if the process is gone or the field
/// does not parse. The fields are counted after the last `)`: the command name (field 2) is in
/// parentheses and may contain spaces and parentheses itself.
pub(crate) fn stat_field<T: FromStr>(pid: u32, field: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_its_own_pid_group_and_a_start_time() {
        let me = std::process::id();
        assert!(stat_field::<char>(me, 3).is_some_and(|s| s.is_ascii_uppercase()));
        let pgrp = rustix::process::getpgrp().as_raw_nonzero().get();
        assert_eq!(stat_field::<i32>(me, 5), Some(pgrp));
        assert!(stat_field::<u64>(me, 22).is_some());
        // The pid and the command name are not after the parenthesis.
        assert_eq!(stat_field::<u32>(me, 2), None);
        assert_eq!(stat_field::<u64>(u32::MAX, 22), None);
    }
}
