//! The boot entries of an installer disc's configuration files: isolinux
//! and syslinux (`label`, `kernel`/`linux`, `append` with `initrd=`,
//! `initrd`, `default`, `menu default`, `include`) and grub
//! (`menuentry { linux ...; initrd ... }`, `set default=N`). Pure text in,
//! the chosen entry out; reading the files is the caller's.

/// One bootable entry: the kernel, initrd and command line a
/// configuration names, paths as written (the caller resolves them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The kernel's path.
    pub kernel: String,
    /// The first initrd's path, if any.
    pub initrd: Option<String>,
    /// The kernel command line without `initrd=`.
    pub cmdline: String,
}

/// Lines of one configuration read at most.
const MAX_LINES: usize = 20_000;

/// What isolinux's parser collected: labels in order, the default.
#[derive(Debug, Default)]
pub struct Syslinux {
    labels: Vec<Label>,
    default: Option<String>,
    menu_default: Option<usize>,
}

#[derive(Debug, Default, Clone)]
struct Label {
    name: String,
    kernel: Option<String>,
    append: Option<String>,
    initrd: Option<String>,
}

impl Syslinux {
    /// Reads one file's lines into the collection; returns the files its
    /// `include` (or `menu include`) lines name, for the caller to feed
    /// in next.
    pub fn feed(&mut self, text: &str) -> Vec<String> {
        let mut includes = Vec::new();
        for line in text.lines().take(MAX_LINES) {
            let line = line.trim();
            let (keyword, rest) = split_word(line);
            let keyword = keyword.to_ascii_lowercase();
            match keyword.as_str() {
                "label" => self.labels.push(Label {
                    name: rest.to_string(),
                    ..Label::default()
                }),
                "default" => self.default = Some(rest.to_string()),
                "include" => includes.push(first_word(rest).to_string()),
                "menu" => {
                    let (sub, arg) = split_word(rest);
                    match sub.to_ascii_lowercase().as_str() {
                        "default" if !self.labels.is_empty() => {
                            self.menu_default = Some(self.labels.len() - 1)
                        }
                        "include" => includes.push(first_word(arg).to_string()),
                        _ => {}
                    }
                }
                "kernel" | "linux" => {
                    if let Some(label) = self.labels.last_mut() {
                        label.kernel = Some(first_word(rest).to_string());
                    }
                }
                "append" => {
                    if let Some(label) = self.labels.last_mut() {
                        label.append = Some(rest.to_string());
                    }
                }
                "initrd" => {
                    if let Some(label) = self.labels.last_mut() {
                        label.initrd = Some(first_word(rest).to_string());
                    }
                }
                _ => {}
            }
        }
        includes
    }

    /// The entry isolinux would boot: the `menu default` label, else the
    /// `default` label, else the first label with a kernel (a `.c32`
    /// module is a menu, not a kernel).
    pub fn chosen(&self) -> Option<BootEntry> {
        let bootable = |l: &&Label| {
            l.kernel
                .as_deref()
                .is_some_and(|k| !k.to_ascii_lowercase().ends_with(".c32"))
        };
        let by_menu = self.menu_default.and_then(|i| self.labels.get(i));
        let by_default = self
            .default
            .as_deref()
            .and_then(|d| self.labels.iter().find(|l| l.name.eq_ignore_ascii_case(d)));
        let label = by_menu
            .filter(bootable)
            .or(by_default.filter(bootable))
            .or_else(|| self.labels.iter().find(bootable))?;
        let (initrd_arg, cmdline) = split_initrd(label.append.as_deref().unwrap_or(""));
        Some(BootEntry {
            kernel: label.kernel.clone().expect("bootable labels have a kernel"),
            initrd: label.initrd.clone().or(initrd_arg),
            cmdline,
        })
    }
}

/// Takes `initrd=A[,B]` out of an append line: the first initrd and the
/// rest of the line.
fn split_initrd(append: &str) -> (Option<String>, String) {
    let mut initrd = None;
    let mut rest = Vec::new();
    for word in append.split_whitespace() {
        match word.strip_prefix("initrd=") {
            Some(value) => {
                initrd.get_or_insert_with(|| value.split(',').next().unwrap_or("").to_string());
            }
            None => rest.push(word),
        }
    }
    (initrd.filter(|i| !i.is_empty()), rest.join(" "))
}

/// The entry grub would boot: menu entry number `set default=N` (else
/// the first) among those with a `linux` line.
pub fn grub(text: &str) -> Option<BootEntry> {
    let mut entries: Vec<BootEntry> = Vec::new();
    let mut default_index = 0usize;
    let mut current: Option<(Option<String>, Option<String>, String)> = None;
    let mut depth = 0usize;
    for line in text.lines().take(MAX_LINES) {
        let line = line.trim();
        let (keyword, rest) = split_word(line);
        match keyword {
            "set" if depth == 0 => {
                if let Some(value) = rest.strip_prefix("default=") {
                    let value = value.trim_matches(|c| c == '"' || c == '\'');
                    if let Ok(n) = value.parse() {
                        default_index = n;
                    }
                }
            }
            "menuentry" => {
                depth += 1;
                if depth == 1 {
                    current = Some((None, None, String::new()));
                }
            }
            "submenu" => depth += 1,
            "linux" | "linuxefi" | "linux16" => {
                if let Some(entry) = current.as_mut() {
                    let (path, args) = split_word(rest);
                    entry.0 = Some(grub_path(path));
                    entry.2 = args.to_string();
                }
            }
            "initrd" | "initrdefi" | "initrd16" => {
                if let Some(entry) = current.as_mut() {
                    entry.1 = Some(grub_path(first_word(rest)));
                }
            }
            _ if line.starts_with('}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    if let Some((Some(kernel), initrd, cmdline)) = current.take() {
                        entries.push(BootEntry {
                            kernel,
                            initrd,
                            cmdline,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    let index = if default_index < entries.len() {
        default_index
    } else {
        0
    };
    entries.into_iter().nth(index)
}

/// A grub path without its `(device)` prefix.
fn grub_path(path: &str) -> String {
    match path.strip_prefix('(').and_then(|p| p.split_once(')')) {
        Some((_, rest)) => rest.to_string(),
        None => path.to_string(),
    }
}

fn split_word(line: &str) -> (&str, &str) {
    match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    }
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_style_isolinux_with_includes_and_menu_default() {
        let mut cfg = Syslinux::default();
        let includes = cfg.feed("path \ninclude menu.cfg\ndefault vesamenu.c32\nprompt 0\n");
        assert_eq!(includes, ["menu.cfg"]);
        cfg.feed(
            "label rescue\n  kernel /install.amd/vmlinuz\n  append rescue/enable=true initrd=/install.amd/initrd.gz\n\
             label install\n  menu label ^Install\n  menu default\n  kernel /install.amd/vmlinuz\n\
             \x20 append vga=788 initrd=/install.amd/initrd.gz,/extra.gz --- quiet\n",
        );
        assert_eq!(
            cfg.chosen().unwrap(),
            BootEntry {
                kernel: "/install.amd/vmlinuz".into(),
                initrd: Some("/install.amd/initrd.gz".into()),
                cmdline: "vga=788 --- quiet".into(),
            }
        );
    }

    #[test]
    fn default_label_and_initrd_line() {
        let mut cfg = Syslinux::default();
        cfg.feed(
            "DEFAULT second\nLABEL first\nLINUX a\nLABEL second\nLINUX boot/vmlinuz-lts\n\
             INITRD boot/initramfs-lts\nAPPEND modules=loop console=ttyS0\n",
        );
        let entry = cfg.chosen().unwrap();
        assert_eq!(entry.kernel, "boot/vmlinuz-lts");
        assert_eq!(entry.initrd.as_deref(), Some("boot/initramfs-lts"));
        assert_eq!(entry.cmdline, "modules=loop console=ttyS0");
    }

    #[test]
    fn menus_alone_are_not_kernels() {
        let mut cfg = Syslinux::default();
        cfg.feed("default menu\nlabel menu\n kernel vesamenu.c32\n");
        assert_eq!(cfg.chosen(), None);
    }

    #[test]
    fn grub_default_entry_with_device_prefixes() {
        let text = "set default=\"1\"\nset timeout=5\nmenuentry 'Try' {\n  linux /casper/vmlinuz boot=casper quiet ---\n  initrd /casper/initrd\n}\n\
                    menuentry 'Install' --class os {\n  set gfxpayload=keep\n  linux ($root)/images/pxeboot/vmlinuz inst.stage2=hd:LABEL=F quiet\n  initrd ($root)/images/pxeboot/initrd.img\n}\n";
        let entry = grub(text).unwrap();
        assert_eq!(entry.kernel, "/images/pxeboot/vmlinuz");
        assert_eq!(entry.initrd.as_deref(), Some("/images/pxeboot/initrd.img"));
        assert_eq!(entry.cmdline, "inst.stage2=hd:LABEL=F quiet");
        assert_eq!(
            grub("set default=7\nmenuentry x {\nlinux /k\n}\n")
                .unwrap()
                .kernel,
            "/k"
        );
        assert_eq!(grub("menuentry x {\necho no kernel\n}\n"), None);
    }
}
