//! The Stream* list RPCs (KEP-5825, kubelet's `CRIListStreaming` feature
//! gate): each answers what its List RPC answers, split over messages so that
//! no message comes near gRPC's default 4 MiB receive limit however many
//! pods, containers or images the node has. Every item is in exactly one
//! message, in the List answer's order; no message is empty; the stream ends
//! after the last message (at once when there are no items).

use std::pin::Pin;

use berth_proto::cri;
use tonic::Status;

/// The encoded bytes one message carries at most: a quarter of gRPC's default
/// 4 MiB below it, for the framing and any larger item. An item larger than
/// this goes in a message of its own (its List answer could not carry it
/// under the default limit either).
const MESSAGE_BYTES: usize = 3 << 20;

/// The stream type of every Stream* RPC.
pub type ListStream<M> = Pin<Box<dyn tokio_stream::Stream<Item = Result<M, Status>> + Send>>;

/// `items` in runs, in order, each of whose encoding as a repeated field
/// stays within `limit` bytes unless it is a single item.
fn split<T: prost::Message>(items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut run_bytes = 0;
    for item in items {
        // In a repeated field each item costs its bytes, their length and
        // a one-byte tag (field 1).
        let len = item.encoded_len();
        let bytes = 1 + prost::length_delimiter_len(len) + len;
        match runs.last_mut() {
            Some(run) if run_bytes + bytes <= limit => {
                run.push(item);
                run_bytes += bytes;
            }
            _ => {
                runs.push(vec![item]);
                run_bytes = bytes;
            }
        }
    }
    runs
}

/// The stream of `message(run)` for each run of `items`.
pub(super) fn stream<T, M>(items: Vec<T>, message: impl Fn(Vec<T>) -> M) -> ListStream<M>
where
    T: prost::Message,
    M: Send + 'static,
{
    let messages: Vec<Result<M, Status>> = split(items, MESSAGE_BYTES).into_iter().map(|run| Ok(message(run))).collect();
    Box::pin(tokio_stream::iter(messages))
}

/// StreamPodSandboxes.
pub(super) fn pod_sandboxes(list: cri::ListPodSandboxResponse) -> ListStream<cri::StreamPodSandboxesResponse> {
    stream(list.items, |pod_sandboxes| cri::StreamPodSandboxesResponse { pod_sandboxes })
}

/// StreamContainers.
pub(super) fn containers(list: cri::ListContainersResponse) -> ListStream<cri::StreamContainersResponse> {
    stream(list.containers, |containers| cri::StreamContainersResponse { containers })
}

/// StreamContainerStats.
pub(super) fn container_stats(list: cri::ListContainerStatsResponse) -> ListStream<cri::StreamContainerStatsResponse> {
    stream(list.stats, |container_stats| cri::StreamContainerStatsResponse { container_stats })
}

/// StreamPodSandboxStats.
pub(super) fn pod_sandbox_stats(list: cri::ListPodSandboxStatsResponse) -> ListStream<cri::StreamPodSandboxStatsResponse> {
    stream(list.stats, |pod_sandbox_stats| cri::StreamPodSandboxStatsResponse { pod_sandbox_stats })
}

/// StreamPodSandboxMetrics.
pub(super) fn pod_sandbox_metrics(list: cri::ListPodSandboxMetricsResponse) -> ListStream<cri::StreamPodSandboxMetricsResponse> {
    stream(list.pod_metrics, |pod_sandbox_metrics| cri::StreamPodSandboxMetricsResponse { pod_sandbox_metrics })
}

/// StreamImages.
pub(super) fn images(list: cri::ListImagesResponse) -> ListStream<cri::StreamImagesResponse> {
    stream(list.images, |images| cri::StreamImagesResponse { images })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn image(id: usize, tag_bytes: usize) -> cri::Image {
        cri::Image { id: format!("sha256:{id:064x}"), repo_tags: vec!["t".repeat(tag_bytes)], size: 1, ..Default::default() }
    }

    #[test]
    fn every_item_once_in_order_and_no_message_over_the_limit() {
        // Items of 100 to 5,000 bytes against a 16 KiB limit, and one larger
        // than the limit.
        let mut items: Vec<cri::Image> = (0..400).map(|i| image(i, 100 + (i * 37) % 4900)).collect();
        items.insert(123, image(9999, 20_000));
        let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
        let limit = 16 << 10;
        let runs = split(items, limit);
        assert!(runs.len() > 10, "{} runs", runs.len());
        for run in &runs {
            assert!(!run.is_empty());
            let bytes = cri::StreamImagesResponse { images: run.clone() }.encoded_len();
            assert!(bytes <= limit || run.len() == 1, "a message of {} items is {bytes} bytes", run.len());
        }
        let streamed: Vec<String> = runs.into_iter().flatten().map(|i| i.id).collect();
        assert_eq!(streamed, ids);
    }

    #[test]
    fn runs_are_as_full_as_the_limit_allows() {
        // Ten items whose encoding is 1,000 bytes each in the message: three
        // fit a 3,000-byte limit, so four messages of 3, 3, 3 and 1.
        let in_message = |tag: usize| cri::StreamImagesResponse { images: vec![image(0, tag)] }.encoded_len();
        let tag = (0..1000).find(|&t| in_message(t) == 1000).expect("a tag length that makes 1,000 bytes");
        let items: Vec<cri::Image> = (0..10).map(|i| image(i, tag)).collect();
        assert_eq!(cri::StreamImagesResponse { images: vec![items[0].clone()] }.encoded_len(), 1000);
        let sizes: Vec<usize> = split(items, 3000).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
    }

    #[test]
    fn no_items_no_messages() {
        assert!(split(Vec::<cri::Image>::new(), MESSAGE_BYTES).is_empty());
    }
}
