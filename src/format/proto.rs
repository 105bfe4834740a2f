//! The few TensorFlow protocol buffer messages a checkpoint uses, written by hand with
//! `#[derive(prost::Message)]` from the `.proto` files named on each type, so building needs no `protoc`.
//! Enum fields are kept as `i32` so that unknown values reach our validation instead of being dropped.

#![allow(missing_docs)]

/// `tensorflow.VersionDef` (framework/versions.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionDef {
    #[prost(int32, tag = "1")]
    pub producer: i32,
    #[prost(int32, tag = "2")]
    pub min_consumer: i32,
    #[prost(int32, repeated, tag = "3")]
    pub bad_consumers: Vec<i32>,
}

/// `tensorflow.BundleHeaderProto` (protobuf/tensor_bundle.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleHeaderProto {
    #[prost(int32, tag = "1")]
    pub num_shards: i32,
    /// `Endianness { LITTLE = 0; BIG = 1; }`
    #[prost(int32, tag = "2")]
    pub endianness: i32,
    #[prost(message, optional, tag = "3")]
    pub version: Option<VersionDef>,
}

/// `tensorflow.BundleEntryProto` (protobuf/tensor_bundle.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundleEntryProto {
    /// `DataType`
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
    #[prost(int32, tag = "3")]
    pub shard_id: i32,
    #[prost(int64, tag = "4")]
    pub offset: i64,
    #[prost(int64, tag = "5")]
    pub size: i64,
    #[prost(fixed32, tag = "6")]
    pub crc32c: u32,
    #[prost(message, repeated, tag = "7")]
    pub slices: Vec<TensorSliceProto>,
}

/// `tensorflow.TensorShapeProto` (framework/tensor_shape.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    #[prost(int64, tag = "1")]
    pub size: i64,
    #[prost(string, tag = "2")]
    pub name: String,
}

/// `tensorflow.TensorSliceProto` (framework/tensor_slice.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorSliceProto {
    #[prost(message, repeated, tag = "1")]
    pub extent: Vec<Extent>,
}

/// `tensorflow.TensorSliceProto.Extent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extent {
    #[prost(int64, tag = "1")]
    pub start: i64,
    #[prost(oneof = "HasLength", tags = "2")]
    pub has_length: Option<HasLength>,
}

/// `oneof has_length` of `Extent`.
#[derive(Clone, Copy, PartialEq, prost::Oneof)]
pub enum HasLength {
    #[prost(int64, tag = "2")]
    Length(i64),
}

/// `tensorflow.SavedTensorSlices` (util/saved_tensor_slice.proto): the value of every V1 record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedTensorSlices {
    #[prost(message, optional, tag = "1")]
    pub meta: Option<SavedTensorSliceMeta>,
    #[prost(message, optional, tag = "2")]
    pub data: Option<SavedSlice>,
}

/// `tensorflow.SavedTensorSliceMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedTensorSliceMeta {
    #[prost(message, repeated, tag = "1")]
    pub tensor: Vec<SavedSliceMeta>,
    #[prost(message, optional, tag = "2")]
    pub versions: Option<VersionDef>,
}

/// `tensorflow.SavedSliceMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedSliceMeta {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
    /// `DataType`
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    #[prost(message, repeated, tag = "4")]
    pub slice: Vec<TensorSliceProto>,
}

/// `tensorflow.SavedSlice`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SavedSlice {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    pub slice: Option<TensorSliceProto>,
    #[prost(message, optional, tag = "3")]
    pub data: Option<TensorProto>,
}

/// `tensorflow.TensorProto` (framework/tensor.proto), the fields V1 checkpoints use.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    #[prost(int32, tag = "3")]
    pub version_number: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
    #[prost(float, repeated, tag = "9")]
    pub scomplex_val: Vec<f32>,
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    #[prost(bool, repeated, tag = "11")]
    pub bool_val: Vec<bool>,
    #[prost(double, repeated, tag = "12")]
    pub dcomplex_val: Vec<f64>,
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
    #[prost(uint32, repeated, tag = "16")]
    pub uint32_val: Vec<u32>,
    #[prost(uint64, repeated, tag = "17")]
    pub uint64_val: Vec<u64>,
}

/// `tensorflow.TrackableObjectGraph` (protobuf/trackable_object_graph.proto): the object graph a
/// TF2 object-based save (`tf.train.Checkpoint`) stores as the string scalar
/// `_CHECKPOINTABLE_OBJECT_GRAPH`. Only the fields the names need are decoded (slot variables,
/// the registered saver and `has_checkpoint_values` are skipped as unknown fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrackableObjectGraph {
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<TrackableObject>,
}

/// `tensorflow.TrackableObjectGraph.TrackableObject`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrackableObject {
    #[prost(message, repeated, tag = "1")]
    pub children: Vec<ObjectReference>,
    #[prost(message, repeated, tag = "2")]
    pub attributes: Vec<SerializedTensor>,
}

/// `tensorflow.TrackableObjectGraph.TrackableObject.ObjectReference`: a child object, by the
/// attribute name its parent holds it under.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ObjectReference {
    #[prost(int32, tag = "1")]
    pub node_id: i32,
    #[prost(string, tag = "2")]
    pub local_name: String,
}

/// `tensorflow.TrackableObjectGraph.TrackableObject.SerializedTensor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SerializedTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub full_name: String,
    #[prost(string, tag = "3")]
    pub checkpoint_key: String,
}
