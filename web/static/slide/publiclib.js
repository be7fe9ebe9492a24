// dicom-microscopy-viewer loads its decoding worker and codecs from PUBLIC_LIB_URL; it must be
// set before the library's script runs, or every tile fails silently.
window.PUBLIC_LIB_URL = '/static/vendor/dicom-microscopy-viewer/dynamic-import/'
