//! Floating IPs (the CSI attribute `vip`): the agent holds the address exactly while a
//! component of its node holds the CSI active, and says `Ok` only once it is on. Each test
//! runs its agents on a thread inside a testbed node's network namespace (root only), so no
//! address of the machine is touched.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use nines_engine::{ActionKind, HaState, Input, Outcome};
use nines_model::{CompId, CsiId, NodeId};
use nines_testbed::Testbed;
use nines_vip::Vip;

const LIMIT: Duration = Duration::from_secs(10);

/// A one-node testbed and a spare address of its subnet (`.100`); `None`, saying so, when
/// not root.
fn bed() -> Option<(Testbed, Vip)> {
    if !nines_testbed::is_root() {
        eprintln!("SKIPPED: the floating IP tests need root (network namespaces)");
        return None;
    }
    let bed = Testbed::new(1).expect("testbed");
    let [a, b, c, _] = bed.node(0).addr().octets();
    let vip = Vip::new(Ipv4Addr::new(a, b, c, 100), 24, "eth0").expect("vip");
    Some((bed, vip))
}

/// Run `f` on a current-thread runtime inside node 0's network namespace: the agent's
/// netlink sockets, made by its tasks, are the node's.
fn on_node<F: std::future::Future<Output = ()>>(bed: &Testbed, f: impl FnOnce() -> F + Send) {
    bed.node(0)
        .enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async { tokio::time::timeout(TEST_LIMIT, f()).await })
        })
        .expect("enter node 0")
        .expect("within the test limit");
}

fn sleeper(vip: &str) -> String {
    config(
        &comp("c", "process", &argv(&["/bin/sleep", "1000"]), &[]),
        &format!("vip: {}", q(vip)),
    )
}

async fn held(vip: &Vip) -> bool {
    nines_vip::held(vip).await.expect("held")
}

/// Poll (bounded) until the address is `want`; for releases nobody answers for.
async fn wait_held(vip: &Vip, want: bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while held(vip).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{vip} held should be {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Assign `csi` to `comp` in `ha` and return the outcome the engine hears.
async fn assign(t: &mut TestAgent, comp: CompId, csi: CsiId, ha: HaState) -> Outcome {
    t.handle.execute(&ActionKind::AssignCsi {
        comp,
        csi,
        ha_state: ha,
    });
    let r = t
        .expect(LIMIT, |i| {
            matches!(i, Input::CsiAssigned { csi: c, ha_state, .. } if *c == csi && *ha_state == ha)
        })
        .await;
    match r.input {
        Input::CsiAssigned { outcome, .. } => outcome,
        _ => unreachable!("matched above"),
    }
}

#[test]
fn the_address_follows_the_active_assignment() {
    let Some((bed, vip)) = bed() else {
        return;
    };
    on_node(&bed, || async {
        // Left from before a fence: a fresh agent must not keep it.
        nines_vip::acquire(&vip)
            .await
            .expect("acquire")
            .announcements_done()
            .await;
        let mut t = TestAgent::start("vip", &sleeper(&vip.to_string())).await;
        assert!(!held(&vip).await, "released at start");
        let c = t.comp("app/sg/su/c");
        let csi = t.csi("app/si/main");
        t.instantiate(c).await;

        // `Ok` is heard only once the address is on.
        assert_eq!(assign(&mut t, c, csi, HaState::Active).await, Outcome::Ok);
        assert!(held(&vip).await, "held when the engine hears Ok");
        for ha in [HaState::Standby, HaState::Quiesced] {
            assert_eq!(assign(&mut t, c, csi, ha).await, Outcome::Ok);
            assert!(!held(&vip).await, "released before {ha:?} is answered");
            assert_eq!(assign(&mut t, c, csi, HaState::Active).await, Outcome::Ok);
            assert!(held(&vip).await);
        }
        // Quiescing: released before the answer, which comes before QuiescingComplete.
        assert_eq!(
            assign(&mut t, c, csi, HaState::Quiescing).await,
            Outcome::Ok
        );
        assert!(!held(&vip).await);
        t.expect(LIMIT, |i| matches!(i, Input::QuiescingComplete { .. }))
            .await;
        assert_eq!(assign(&mut t, c, csi, HaState::Active).await, Outcome::Ok);

        t.handle.execute(&ActionKind::RemoveCsi { comp: c, csi });
        t.expect(LIMIT, |i| matches!(i, Input::CsiRemoved { .. }))
            .await;
        assert!(!held(&vip).await, "released before the removal is answered");

        // The component dies while active: the address goes with it.
        assert_eq!(assign(&mut t, c, csi, HaState::Active).await, Outcome::Ok);
        let pid = t.pid(c).expect("running");
        kill9(pid);
        t.expect(LIMIT, |i| matches!(i, Input::ComponentFailed { .. }))
            .await;
        wait_held(&vip, false).await;

        // Cleaned up while active, and the agent stopping while active.
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        t.expect(LIMIT, |i| matches!(i, Input::CommandDone { .. }))
            .await;
        t.instantiate(c).await;
        assert_eq!(assign(&mut t, c, csi, HaState::Active).await, Outcome::Ok);
        t.handle.execute(&ActionKind::Cleanup { comp: c });
        t.expect(LIMIT, |i| matches!(i, Input::CommandDone { .. }))
            .await;
        assert!(!held(&vip).await, "released by the cleanup");
        t.instantiate(c).await;
        assert_eq!(assign(&mut t, c, csi, HaState::Active).await, Outcome::Ok);
        t.teardown().await;
        assert!(!held(&vip).await, "released by the shutdown");
    });
}

#[test]
fn a_vip_that_cannot_be_acquired_fails_the_active_assignment() {
    let Some((bed, vip)) = bed() else {
        return;
    };
    on_node(&bed, || async {
        // Not an address; and an interface the node does not have.
        for text in [
            "10.77.0.300/24".to_string(),
            format!("{}/24@eth9", vip.addr()),
        ] {
            let mut t = TestAgent::start("vip-bad", &sleeper(&text)).await;
            let c = t.comp("app/sg/su/c");
            let csi = t.csi("app/si/main");
            t.instantiate(c).await;
            assert_eq!(
                assign(&mut t, c, csi, HaState::Active).await,
                Outcome::Failed,
                "{text}"
            );
            // Other states need no address and are answered as usual.
            assert_eq!(assign(&mut t, c, csi, HaState::Standby).await, Outcome::Ok);
            assert!(!held(&vip).await);
            t.teardown().await;
        }
    });
}

#[test]
fn agents_of_one_host_share_the_address_while_either_holds_it() {
    let Some((bed, vip)) = bed() else {
        return;
    };
    on_node(&bed, || async {
        // Two nodes of one `nines run`: one process, one network namespace, one host.
        let model = load(&sleeper(&vip.to_string()));
        let mut n1 = TestAgent::start_node(TempDir::new("vip-n1"), model.clone(), NodeId(0)).await;
        let mut n2 = TestAgent::start_node(TempDir::new("vip-n2"), model, NodeId(1)).await;
        let (c1, c2) = (n1.comp("app/sg/su/c"), n2.comp("app/sg/su2/c"));
        let csi = n1.csi("app/si/main");
        n1.instantiate(c1).await;
        n2.instantiate(c2).await;
        assert_eq!(assign(&mut n1, c1, csi, HaState::Active).await, Outcome::Ok);
        // A failover whose steps cross: the new active first, the old one's exit after.
        assert_eq!(assign(&mut n2, c2, csi, HaState::Active).await, Outcome::Ok);
        kill9(n1.pid(c1).expect("running"));
        n1.expect(LIMIT, |i| matches!(i, Input::ComponentFailed { .. }))
            .await;
        // The old holder's release is queued before the report: once reported, it is done
        // or next, and the address stays for the new holder.
        assert_eq!(assign(&mut n2, c2, csi, HaState::Active).await, Outcome::Ok);
        assert!(held(&vip).await, "node 2 still holds it");
        n1.teardown().await;
        assert!(held(&vip).await, "node 1 stopping leaves node 2's address");
        assert_eq!(
            assign(&mut n2, c2, csi, HaState::Standby).await,
            Outcome::Ok
        );
        assert!(!held(&vip).await, "released by the last holder");
        n2.teardown().await;
    });
}
