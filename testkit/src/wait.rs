//! Waiting on a condition with a deadline: the one `until` the tests share.
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// Polls `cond` every `every` until it holds. Fails the test with
/// "timed out waiting for `what`" once `wait` has passed.
pub async fn until<F, Fut>(what: &str, wait: Duration, every: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    until_ok(what, wait, every, || {
        let fut = cond();
        async move { if fut.await { Ok(()) } else { Err(NeverHeld) } }
    })
    .await
}

/// Polls `check` every `every` until it gives `Ok`, and returns that value.
/// Fails the test once `wait` has passed, with `what` and the last `Err`
/// (what the test saw instead).
pub async fn until_ok<T, E, F, Fut>(what: &str, wait: Duration, every: Duration, mut check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {e}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

/// What [`until`] reports: a plain condition says nothing more.
struct NeverHeld;

impl Display for NeverHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("it never held")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_returns_once_the_condition_holds() {
        let mut n = 0;
        until(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                let done = n >= 3;
                async move { done }
            },
        )
        .await;
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn until_ok_hands_back_the_value() {
        let mut n = 0;
        let v = until_ok("a value", Duration::from_secs(5), Duration::ZERO, || {
            n += 1;
            let r = if n == 2 { Ok(n * 10) } else { Err("not yet") };
            async move { r }
        })
        .await;
        assert_eq!(v, 20);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for nothing: still 7")]
    async fn until_ok_fails_at_the_deadline_with_what_it_saw() {
        until_ok::<(), _, _, _>(
            "nothing",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { Err("still 7") },
        )
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out waiting for never")]
    async fn until_fails_at_the_deadline() {
        until(
            "never",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { false },
        )
        .await;
    }
}
