//! The sandbox API: run a command in a session, move files in and out.
//! Transfers stream: nothing is held whole in memory.
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use warren_proto::sandbox::{ExecRequest, ExecResult, FileList, FilesQuery};

use crate::{Client, Error, Result};

/// How long one transfer may take, whatever the client's own timeout.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Time for an exec answer beyond the command's own limit.
const EXEC_SLACK: Duration = Duration::from_secs(60);

/// A download as it arrives.
pub struct Download {
    /// The file's size, as the session reported it.
    pub size: Option<u64>,
    resp: reqwest::Response,
}

impl Download {
    /// The bytes, chunk by chunk; an error if the transfer is cut short.
    pub fn bytes(self) -> impl Stream<Item = Result<Bytes>> {
        self.resp
            .bytes_stream()
            .map(|r| r.map_err(|e| Error::Decode(format!("the download was cut short: {e}"))))
    }
}

impl Client {
    fn files(&self, method: reqwest::Method, id: &str, q: &FilesQuery) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/v1/sessions/{id}/files", self.base))
            .bearer_auth(&self.key)
            .query(q)
    }

    /// Sends `r`; an answer that is not a success becomes [`Error::Api`].
    async fn checked(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = r.send().await.map_err(|source| Error::Unreachable {
            base: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        Err(Error::Api {
            status,
            code: v["error"]["code"].as_str().unwrap_or("error").into(),
            message: v["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .into(),
        })
    }

    /// Runs a command in the session and waits for its end (or its time
    /// limit: then `timed_out`, and no exit code).
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult> {
        let limit = Duration::from_secs(req.timeout().map_err(Error::Setup)?);
        let r = self
            .http
            .post(format!("{}/v1/sessions/{id}/exec", self.base))
            .bearer_auth(&self.key)
            .json(req)
            .timeout(limit + EXEC_SLACK);
        let resp = self.checked(r).await?;
        resp.json()
            .await
            .map_err(|e| Error::Decode(format!("exec answer: {e}")))
    }

    /// Writes `body` to `path` in the session (created or replaced whole).
    pub async fn upload(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        length: Option<u64>,
        body: reqwest::Body,
    ) -> Result<()> {
        let q = FilesQuery {
            path: path.into(),
            mode: mode.map(|m| format!("{m:04o}")),
            ..Default::default()
        };
        let mut r = self
            .files(reqwest::Method::PUT, id, &q)
            .header("content-type", "application/octet-stream")
            .timeout(TRANSFER_TIMEOUT)
            .body(body);
        if let Some(n) = length {
            r = r.header("content-length", n);
        }
        self.checked(r).await.map(drop)
    }

    /// Reads the file at `path` in the session.
    pub async fn download(&self, id: &str, path: &str) -> Result<Download> {
        let q = FilesQuery {
            path: path.into(),
            ..Default::default()
        };
        let r = self
            .files(reqwest::Method::GET, id, &q)
            .timeout(TRANSFER_TIMEOUT);
        let resp = self.checked(r).await?;
        Ok(Download {
            size: resp.content_length(),
            resp,
        })
    }

    /// The directory at `path` in the session.
    pub async fn list(&self, id: &str, path: &str) -> Result<FileList> {
        let q = FilesQuery {
            path: path.into(),
            list: true,
            ..Default::default()
        };
        let resp = self
            .checked(self.files(reqwest::Method::GET, id, &q))
            .await?;
        resp.json()
            .await
            .map_err(|e| Error::Decode(format!("listing: {e}")))
    }

    /// Makes the directory `path` (and its parents) in the session.
    pub async fn mkdir(&self, id: &str, path: &str) -> Result<()> {
        let q = FilesQuery {
            path: path.into(),
            mkdir: true,
            ..Default::default()
        };
        self.checked(self.files(reqwest::Method::POST, id, &q))
            .await
            .map(drop)
    }

    /// Removes `path` in the session (a directory's contents too with
    /// `recursive`).
    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<()> {
        let q = FilesQuery {
            path: path.into(),
            recursive,
            ..Default::default()
        };
        self.checked(self.files(reqwest::Method::DELETE, id, &q))
            .await
            .map(drop)
    }
}
