greeting <- function() "hello from byoitestpkg"
