"""An example peftx plug-in: the `labelled_lines` task and the `onehot` input adapter."""
