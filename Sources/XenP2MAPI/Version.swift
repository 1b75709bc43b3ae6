// xenp2m's own version: `--version` of both binaries and the Debian package
// (scripts/package.sh reads it from here; debian/changelog's top entry must agree).
public enum XenP2MVersion {
    public static let string = "0.9.0"
}
