"""What is measured: one repeat of each row of the table. Loaders (ours, the originals', a stock
webdataset pipeline, the floor and a codec's limit, DALI in its own process, the front door), the
peer libraries (litdata, MosaicML streaming, TorchGeo), conversion, training steps and S3."""
